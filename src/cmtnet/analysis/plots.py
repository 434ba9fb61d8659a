"""The figures of the analysis commands (`complexity --plot`, `scaling --plot`, `ablate --plot`, `bench --chart`):
a figure drawn off-screen, and the same finish and PNG for each."""
from pathlib import Path
from typing import Any, Tuple, Union

__all__ = ['new_figure', 'save_figure']


def new_figure(figsize: Tuple[float, float]) -> Tuple[Any, Any]:
    """(figure, axes) of a matplotlib figure drawn without a display."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=figsize)


def save_figure(fig: Any, path: Union[str, Path], dpi: int = 110) -> None:
    """Lay the figure out, write it as a PNG at `path` and free it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
