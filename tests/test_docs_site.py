"""The README is a front door and docs/ a site: short pages, every page in mkdocs.yml's navigation, and the
README's links to docs/ resolve (mkdocs checks the links between pages; the README is not one of them)."""
import re

import yaml

from markdown_blocks import ROOT

README_LINES = 160
PAGE_LINES = 250
DOCS = ROOT / 'docs'


def _nav_files(nav) -> list:
    """The files of a mkdocs nav: a list of {title: file or nested list} entries, or bare file names."""
    files = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / 'README.md').read_text().splitlines()
    assert len(lines) <= README_LINES, f'README.md has {len(lines)} lines, at most {README_LINES}'
    first = '\n'.join(lines[:12])
    assert 'make demo' in first and 'make test' in first


def test_every_page_is_short():
    long = {str(p.relative_to(ROOT)): n for p in DOCS.rglob('*.md') if (n := len(p.read_text().splitlines())) > PAGE_LINES}
    assert not long, f'pages over {PAGE_LINES} lines: {long}'


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
    nav = _nav_files(config['nav'])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob('*.md'))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav)), 'a page is in the nav twice'


def test_readme_links_into_docs_resolve():
    text = (ROOT / 'README.md').read_text()
    targets = re.findall(r'\]\((docs/[^)#\s]+)', text)
    assert {'docs/getting-started.md', 'docs/speed.md', 'docs/serve.png'} <= set(targets)
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, missing


def test_the_nav_helper_reads_nested_sections():
    nav = [{'Home': 'index.md'}, {'Deployment': [{'Speed': 'speed.md'}, 'serve.md']}]
    assert _nav_files(nav) == ['index.md', 'speed.md', 'serve.md']
