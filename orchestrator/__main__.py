"""``python -m orchestrator [+sweep=NAME] [overrides]`` (or ``attn-sweep``): run a sweep (see conf/)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from orchestrator import cli, config, forkserver  # noqa: F401  (config registers the schema conf/config.yaml names)

_jobs = 0  # runs of this command so far: the first one's time counts from the process start (multirun)


@hydra.main(version_base="1.3", config_path=cli.CONF, config_name="config")
def app(cfg) -> None:
    global _jobs
    import orchestrator
    from orchestrator import driver
    from orchestrator.summary import command_start, process_started_at

    began_at, before = (command_start(process_started_at(), orchestrator.imported_at) if _jobs == 0
                        else (None, None))
    _jobs += 1
    cli.console()
    if before is not None:
        logging.getLogger("orchestrator").info(
            "this process began %.1f s before Python reached this tool (a shell's commands before it exec'd python, "
            "or a slow interpreter start): the whole command's time counts from there", before)
    code = driver.main(cfg, HydraConfig.get().runtime.output_dir, began_at)
    if code:
        sys.exit(code)


def main() -> None:
    if cli.runs_cells_here(sys.argv[1:]):
        forkserver.start_early()  # the cells' fork server imports torch while Hydra composes the config
    cli.run(app)


if __name__ == "__main__":
    main()
