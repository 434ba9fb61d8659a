"""`cmtnet info` (analysis/info.py): the counted params and MACs beside the published figures."""
import contextlib
import io
import re

import pytest

from cmtnet import VARIANT_ARGS
from cmtnet.cli import main
from cmtnet.models.variants import PUBLISHED

VARIANTS = list(VARIANT_ARGS)


def _table(text: str) -> list:
    """The cells of the markdown table lines of `text`."""
    return [[c.strip() for c in line.strip()[1:-1].split('|')] for line in text.splitlines() if line.startswith('|')]


@pytest.fixture(scope='module')
def markdown_info() -> str:
    # the full table takes a while, so it is made once for the tests that read it (capsys is per test)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(['info', '--markdown']) == 0
    return out.getvalue()


def test_info_markdown_is_a_valid_table_with_a_row_per_variant(markdown_info):
    rows = _table(markdown_info)
    assert len(rows) == 2 + len(VARIANTS)
    assert all(len(r) == len(rows[0]) for r in rows)
    assert all(re.fullmatch(r':?-{3,}:?', c) for c in rows[1])
    assert [r[0] for r in rows[2:]] == VARIANTS


def test_info_matches_released_code(markdown_info):
    rows = _table(markdown_info)
    col = {h: i for i, h in enumerate(rows[0])}
    for row in rows[2:]:
        ref = PUBLISHED[row[col['model']]]
        assert int(row[col['params']].replace(',', '')) == ref.released_params
        assert float(row[col['GMACs']]) == pytest.approx(ref.released_gmacs, rel=0.005)
    assert 'fvcore' in markdown_info  # the header says which library counted
    for row in rows[2:]:  # the paper's figures, as models/variants.py holds them
        paper = PUBLISHED[row[col['model']]]
        assert (row[col['paper params']], row[col['paper top-1']]) == (f'{paper.paper_params_m}M', paper.paper_top1)


def test_info_plain_at_another_size(capsys):
    assert main(['info', '--variant', 'cmt_ti', '--img-size', '192']) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('model'))
    assert set(lines[header + 1].replace(' ', '')) == {'-'}
    (row,) = lines[header + 2:]
    cells = row.split()
    assert cells[:2] == ['cmt_ti', '192']
    assert int(cells[2].replace(',', '')) > PUBLISHED['cmt_ti'].released_params  # larger position biases
    assert cells[4:] == ['-'] * 6  # published figures are for the native size only


def test_info_rejects_bad_img_size(capsys):
    with pytest.raises(SystemExit):
        main(['info', '--img-size', '100'])
    assert 'multiple of 32' in capsys.readouterr().err
