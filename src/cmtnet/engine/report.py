"""What a run shows and leaves behind about its progress: the progress bar, metrics.csv and curves.png."""
import csv
import io
from typing import Any, Dict, List, Sequence, Tuple

from tqdm import tqdm

__all__ = ['TIMING_COLUMNS', 'metrics_csv', 'plot_curves', 'progress_bar']

# metrics.csv columns that measure the machine rather than the model
TIMING_COLUMNS = ('epoch_time', 'img_per_s')


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    """A per-epoch bar, shown on a terminal only (not in logs), and never when `enabled` is False."""
    return tqdm(total=total, initial=initial, desc=desc, disable=None if enabled else True, leave=False,
                dynamic_ncols=True)


def metrics_csv(rows: List[Dict[str, Any]]) -> str:
    """The rows (one per epoch) as CSV text, floats to 6 significant digits."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: f'{v:.6g}' if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def plot_curves(rows: List[Dict[str, Any]], panels: Dict[str, Sequence[Tuple[str, str]]]) -> bytes:
    """The metrics per epoch as a PNG: one panel per entry of `panels` (title -> [(column, label), ...]);
    columns the rows lack are left out."""
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    epochs = [r['epoch'] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for key, label in lines:
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], label=label)
        ax.set(xlabel='epoch', ylabel=title, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    return buf.getvalue()
