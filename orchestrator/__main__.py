"""``python -m orchestrator [+sweep=NAME] [overrides]``: run a sweep (see conf/)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from orchestrator.config import ConfigError
from orchestrator.sweep import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    try:
        run(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
