"""Every example in the README and docs/ runs: each page's ```python and ```bash blocks, in page order, in an
empty temporary folder (one Python namespace per page; files a block writes are there for the next).

Shell blocks run as a reader runs them after the README's set-up command, which creates and activates a
virtual environment: here the environment running the tests plays that part (its bin/ comes first on PATH,
so `taskzoo` and `python` are its own), and set-up commands (`python3 -m venv`, activating it,
`pip install`) are left out of the lines that hold them. A block that cannot run here (it needs the network,
GPUs or a hub dataset) is marked in the page, just above it, with `<!-- docs-test: skip, REASON -->`.

Each `taskzoo` process spends seconds importing torch and transformers. So the default run gives each
`taskzoo ...` line of a shell block to the function the installed command calls (taskzoo.cli.main), in this
process, with the same arguments, folder and printed output; a heredoc (`cat > FILE <<'EOF'`) is written as bash
would, and any other line runs in bash. A block with other shell syntax (`if`, pipes into taskzoo) runs in bash
whole. The slow run (`-m slow`) runs those pages again with their shell blocks in bash, each command a process.
"""

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from taskzoo.models import PACKAGED_MODELS, packaged_model_path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^(?:<!-- docs-test: (skip[^>]*?) -->\n)?```(python|bash|shell)\n(.*?)^```", re.S | re.M)
SETUP = re.compile(r"(python3? -m venv|\. \S*activate|source \S*activate|pip3? install)\b")


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason or None) for each runnable block of ``page``, in order."""
    return [(language, code, skip) for skip, language, code in BLOCK.findall(page.read_text())]


def without_setup(script: str) -> str:
    """The script without its set-up commands: in a line that starts by creating the environment, the
    `&&`-joined commands that create, activate or install into it are dropped, the others kept."""
    lines = []
    for line in script.splitlines():
        if line.startswith(("python3 -m venv", "python -m venv")):
            line = " && ".join(command for command in line.split(" && ") if not SETUP.match(command.strip()))
        lines.append(line)
    return "\n".join(lines) + "\n"


def run_shell(script: str, folder: Path, where: str) -> str:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", without_setup(script)], cwd=folder,
                          env=environment, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"{where} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    assert "Traceback" not in done.stderr, f"{where} printed a traceback:\n{done.stderr[-3000:]}"
    return done.stdout


HEREDOC = re.compile(r"^cat > (\S+) <<'?(\w+)'?$")
SHELL_SYNTAX = re.compile(r"^(if|then|else|elif|fi|for|while|do|done|case|esac)\b|[|;&<>`$]")


def logical_lines(script: str) -> list[str]:
    """The script's lines with backslash continuations joined; heredoc bodies stay as they are."""
    lines, pending = [], ""
    for line in script.splitlines():
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def in_process_steps(script: str) -> list[tuple[str, object]] | None:
    """("file", (name, text)), ("taskzoo", argv) or ("bash", line) for each command of the script, or None where
    it holds shell syntax this reading does not follow (the block then runs in bash)."""
    steps, lines = [], iter(logical_lines(without_setup(script)))
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if heredoc := HEREDOC.match(line.strip()):
            body = []
            for text in lines:
                if text == heredoc[2]:
                    break
                body.append(text + "\n")
            steps.append(("file", (heredoc[1], "".join(body))))
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a quote left open: a shell construct of its own
            return None
        if words[:1] == ["taskzoo"] and not SHELL_SYNTAX.search(" ".join(words[1:]).replace("'", "")):
            steps.append(("taskzoo", words[1:]))
        elif words and words[0] != "taskzoo" and not SHELL_SYNTAX.search(line.split("#")[0]):
            steps.append(("bash", line))
        else:
            return None
    return steps


def run_taskzoo_in_process(argv: list[str], where: str) -> str:
    """`taskzoo ARGV` as the installed command runs it (taskzoo.cli.main), in this process; its printed output.
    The environment variables a command sets (e.g. for --device) are put back afterwards."""
    from taskzoo.cli import main

    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's errors and --help
                code = exit_.code or 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if code != 0:
        raise AssertionError(f"{where}: `taskzoo {shlex.join(argv)}` failed (exit {code}):\n{err.getvalue()[-3000:]}")
    assert "Traceback" not in err.getvalue(), f"{where} printed a traceback:\n{err.getvalue()[-3000:]}"
    return out.getvalue()


def run_shell_in_process(script: str, folder: Path, where: str) -> str:
    """The script's commands in order in ``folder`` (the current folder): `taskzoo` lines in this process, the
    others in bash; the whole script in bash where it holds other shell syntax."""
    steps = in_process_steps(script)
    if steps is None:
        return run_shell(script, folder, where)
    printed = []
    for kind, step in steps:
        if kind == "file":
            (folder / step[0]).write_text(step[1])
        elif kind == "taskzoo":
            printed.append(run_taskzoo_in_process(step, where))
        else:
            printed.append(run_shell(step, folder, where))
    return "".join(printed)


def packaged_models_missing(text: str) -> list[str]:
    """The packaged models a page uses whose package is not installed (the page is skipped then)."""
    return [name for name in PACKAGED_MODELS if name in text.lower() and packaged_model_path(name) is None]


def readme_cli_learns(outputs: list[str]) -> None:
    """The README's command-line example fine-tunes all-MiniLM-L6-v2 on its own reviews: the held-out
    accuracy that `taskzoo evaluate` prints is well above chance (0.5)."""
    scores = [json.loads(line) for output in outputs for line in output.splitlines()
              if line.startswith("{") and '"accuracy"' in line and '"output_dir"' not in line]
    assert scores, "the README's command-line block printed no evaluation"
    assert scores[-1]["accuracy"] >= 0.8, scores


# Page-specific checks on what the shell blocks printed.
CHECKS = {"README.md": readme_cli_learns}


def runs_taskzoo_in_shell(page: Path) -> bool:
    return any(language != "python" and not skip and "taskzoo " in code for language, code, skip in blocks(page))


# Every page in the default run, shell blocks' `taskzoo` lines in this process; pages whose shell blocks run
# `taskzoo` again in the slow run, each command its own process as a reader's shell runs it.
# Pages whose examples repeat what a test file checks at a fraction of the time (several exports; a segmenter and a
# LoRA pipeline trained as tests/test_image_segmentation.py and tests/test_text_to_image.py train theirs) run with
# -m slow only, which keeps the default run within its time.
SLOW_PAGES = {"docs/export.md", "docs/tasks/image-segmentation.md", "docs/tasks/text-to-image.md"}
CASES = [pytest.param(page, False, id=str(page.relative_to(ROOT)),
                      marks=[pytest.mark.slow] if str(page.relative_to(ROOT)) in SLOW_PAGES else [])
         for page in PAGES if blocks(page)] + [
    pytest.param(page, True, id=f"{page.relative_to(ROOT)}-processes", marks=pytest.mark.slow)
    for page in PAGES if blocks(page) and runs_taskzoo_in_shell(page)]


@pytest.mark.parametrize("page, processes", CASES)
def test_examples_run(page, processes, tmp_path, monkeypatch):
    text = page.read_text()
    if missing := packaged_models_missing(text):
        pytest.skip(f"{page.name} uses {missing}, whose package is not installed")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    outputs = []
    for number, (language, code, skip) in enumerate(blocks(page), 1):
        where = f"{page.relative_to(ROOT)}, block {number} ({language})"
        if skip:
            assert re.match(r"skip, \S", skip), f"{where}: a skipped block says why (docs-test: skip, REASON)"
            continue
        if language != "python":
            outputs.append((run_shell if processes else run_shell_in_process)(code, tmp_path, where))
            continue
        try:
            exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{where} failed: {error!r}") from error
    if page.name in CHECKS:
        CHECKS[page.name](outputs)


def test_setup_commands_are_left_out_and_the_rest_kept():
    line = 'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[all]" && taskzoo demo'
    assert without_setup(line) == "taskzoo demo\n"
    assert without_setup("taskzoo tasks\npip install x\n") == "taskzoo tasks\npip install x\n"  # only in a set-up line


def test_api_reference_is_up_to_date():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_api_docs.py"), "--check"])
    assert check.returncode == 0, "docs/api.md is out of date: run python scripts/make_api_docs.py"


def test_families_tables_are_up_to_date():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_family_tables.py"), "--check"])
    assert check.returncode == 0, "a docs/tasks families table is out of date: run python scripts/make_family_tables.py"


def test_a_stale_families_table_is_rewritten_and_a_page_without_one_is_named():
    from taskzoo.testing.kit import MARKERS, render_table, with_table

    start, end = MARKERS
    page = f"# translation\n\n{start}\n| an old table |\n{end}\nthe rest\n"
    table = render_table("translation")
    assert with_table(page, "translation") == f"# translation\n\n{start}\n{table}{end}\nthe rest\n"
    assert "| `t5` | T5ForConditionalGeneration" in render_table("translation")
    with pytest.raises(ValueError, match="The translation page has no families table markers"):
        with_table("# translation\n", "translation")
