"""``python -m orchestrator [+sweep=NAME] [overrides]`` (or ``attn-sweep``): run a sweep (see conf/)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from orchestrator import cli, config, forkserver  # noqa: F401  (config registers the schema conf/config.yaml names)


@hydra.main(version_base="1.3", config_path=cli.CONF, config_name="config")
def app(cfg) -> None:
    from orchestrator import driver

    cli.console()
    code = driver.main(cfg, HydraConfig.get().runtime.output_dir)
    if code:
        sys.exit(code)


def main() -> None:
    if not set(sys.argv[1:]) & cli.NO_RUN:
        forkserver.start_early()  # the cells' fork server imports torch while Hydra composes the config
    cli.run(app)


if __name__ == "__main__":
    main()
