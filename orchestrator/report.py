"""Tables and plots of a dataset (filled in by the reports issue)."""


def for_sweep(cfg, store, cells, output_dir) -> None:
    pass
