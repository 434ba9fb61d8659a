"""Text and markdown tables for the analysis commands (`info`, `complexity`, `scaling`, `ablate`, `bench`).

Each command keeps its numbers unrounded (that is what `--json` prints) and formats them only here, for
people: a column is a header, an alignment and a function from a row to its cell.
"""
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ['Column', 'dump_json', 'format_table', 'millions', 'percent', 'print_report', 'rows_as_dicts']


@dataclass(frozen=True)
class Column:
    """A table column: its header, how a row shows in it, and whether it is right-aligned (numbers)."""
    header: str
    cell: Callable[[Dict[str, Any]], str]
    right: bool = True


def millions(value: float, decimals: int = 2) -> str:
    """A count in millions, e.g. 26_256_160 -> '26.26'."""
    return f'{value / 1e6:,.{decimals}f}'


def percent(fraction: float, signed: bool = True) -> str:
    """A fraction as a percentage, e.g. 0.0123 -> '+1.23%'; '-' when there is none (NaN)."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return '-'
    return f'{fraction:+.2%}' if signed else f'{fraction:.2%}'


def format_table(columns: Sequence[Column], rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """`rows` as an aligned plain-text table, or as a GitHub markdown table."""
    headers = [c.header for c in columns]
    cells = [[c.cell(row) for c in columns] for row in rows]
    if markdown:
        lines = ['| ' + ' | '.join(headers) + ' |',
                 '|' + '|'.join('---:' if c.right else ':---' for c in columns) + '|']
        return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in cells])
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return '  '.join(v.rjust(w) if c.right else v.ljust(w)
                         for v, w, c in zip(values, widths, columns)).rstrip()

    return '\n'.join([line(headers), line(['-' * w for w in widths])] + [line(r) for r in cells])


def dump_json(obj: Any) -> str:
    """`obj` as indented JSON with its numbers unrounded; NaN (a figure that does not exist) as null."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), indent=2)


def rows_as_dicts(rows: Sequence[Any]) -> List[Dict[str, Any]]:
    """Dataclass rows as plain dicts (for tables and JSON)."""
    return [asdict(r) for r in rows]


def print_report(*sections: str, plot: Optional[str] = None) -> None:
    """A command's text report: `sections` (a header, tables, notes) one blank line apart, then on stderr the
    path of the plot it wrote, if any."""
    print('\n\n'.join(sections))
    if plot:
        print(f'\nplot: {plot}', file=sys.stderr)
