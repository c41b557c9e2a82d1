""".ci/check_doc_tables.py: CI fails when a table the docs mark as checked is no longer what its command prints."""
import subprocess
import sys

from tiny_configs import REPO

SCRIPT = REPO / '.ci' / 'check_doc_tables.py'
TABLE = """| tile | max | share | PSNR (dB) |
|---:|---:|---:|---:|
| 32 | 26 | 17.01% | 48.93 |
| 64 | 26 | 7.65% | inf |
"""


def _doc(tmp_path, printed, stated=TABLE, tolerance='0.02'):
    """A markdown file whose checked block states ``stated`` and whose command prints ``printed``."""
    (tmp_path / 'out.txt').write_text('scene.png: 200x150 LR pixels\n' + printed)
    head = f'<!-- checked (tolerance {tolerance}): cat {tmp_path / "out.txt"} -->' if tolerance else \
        f'<!-- checked: cat {tmp_path / "out.txt"} -->'
    doc = tmp_path / 'doc.md'
    doc.write_text(f'Some text.\n\n  {head}\n' + ''.join(f'  {line}\n' for line in stated.splitlines())
                   + '  <!-- /checked -->\n\nMore text.\n')
    return doc


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_a_table_equal_to_what_its_command_prints_passes(tmp_path):
    proc = _run(_doc(tmp_path, TABLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'as measured (3 rows, tolerance 0.02)' in proc.stdout


def test_numbers_within_the_tolerance_pass_and_beyond_it_fail_naming_the_cell(tmp_path):
    assert _run(_doc(tmp_path, TABLE.replace('48.93', '48.95'))).returncode == 0
    proc = _run(_doc(tmp_path, TABLE.replace('48.93', '48.96').replace('7.65%', '7.70%')))
    assert proc.returncode == 1
    assert "row 2, column 4: doc '48.93', measured '48.96'" in proc.stdout
    assert "row 3, column 3: doc '7.65%', measured '7.70%'" in proc.stdout


def test_without_a_tolerance_numbers_must_be_equal_and_text_always(tmp_path):
    assert _run(_doc(tmp_path, TABLE.replace('48.93', '48.94'), tolerance=None)).returncode == 1
    proc = _run(_doc(tmp_path, TABLE.replace('PSNR (dB)', 'PSNR')))
    assert proc.returncode == 1 and "column 4: doc 'PSNR (dB)', measured 'PSNR'" in proc.stdout
    assert _run(_doc(tmp_path, TABLE.replace('inf', '60.00'))).returncode == 1  # identical became different


def test_a_missing_row_fails(tmp_path):
    proc = _run(_doc(tmp_path, '\n'.join(TABLE.splitlines()[:3]) + '\n'))
    assert proc.returncode == 1 and '3 rows in the doc, 2 measured' in proc.stdout


def test_a_failing_command_or_no_table_is_exit_2_naming_the_place(tmp_path):
    doc = _doc(tmp_path, 'no table here\n')
    proc = _run(doc)
    assert proc.returncode == 2 and f'{doc}:3: the command printed no table' in proc.stderr
    doc.write_text('<!-- checked: exit 3 -->\n| a |\n<!-- /checked -->\n')
    proc = _run(doc)
    assert proc.returncode == 2 and 'the command failed (exit 3' in proc.stderr


def test_the_repository_docs_have_checked_tables():
    proc = _run('--list')
    assert proc.returncode == 0 and 'docs/inference.md' in proc.stdout and 'segsr_basicsr.seams' in proc.stdout


def test_a_block_inside_fenced_code_is_an_example_and_not_run(tmp_path):
    doc = _doc(tmp_path, TABLE)
    doc.write_text('```markdown\n<!-- checked: exit 3 -->\n| a |\n<!-- /checked -->\n```\n' + doc.read_text())
    proc = _run(doc)
    assert proc.returncode == 0 and proc.stdout.count('as measured') == 1, proc.stdout + proc.stderr
