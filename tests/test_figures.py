"""No unmeasured speed figures: a rate (steps/s, images/s, ...) written in the code's comments and strings or in
the docs is either a target (written as one: "≥ 1,300 steps/s", "target of ..."), a CPU figure whose section
names the CPU it was measured on, or a GPU figure that cites the gpu_check report it came from (a
gpu_check.json of the repository, not a dry run, that holds the number). Literal samples of output (code blocks,
`code spans`, quoted text) are not claims. tests/ is not read: its rates are fixtures of display tests."""
import io
import json
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

from conftest import ROOT

NUMBER = r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
UNIT = r"(?:steps?/s|steps? per second|img/s|images?/s|it/s|samples/s)\b"
RATE = re.compile(NUMBER + r"\s*(?:aggregate\s+|model-)?" + UNIT, re.IGNORECASE)
TARGET = re.compile(r"(≥|>=|≤|<=|at least|at most|target(?: of)?:?)\s*$", re.IGNORECASE)
CPU_SOURCE = re.compile(r"measured on [^.\n]*\bCPU\b", re.IGNORECASE)
REPORT = re.compile(r"gpu_check report:?\s*\[?`?([\w./-]*gpu_check\.json)")
LITERAL = re.compile(r"`[^`\n]*`|'[^'\n]*'|\"[^\"\n]*\"")  # quoted samples of output
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def contexts(path: Path, text: str):
    """The file's prose as (where figures are read, where their sources are), in the units a figure's source
    must be found in: a markdown section (from one heading to the next), a Python comment block or string,
    another file's paragraphs. Code blocks, code spans and (in Python) quoted text are samples, not claims."""
    if path.suffix == ".md":
        for section in re.split(r"^(?=#)", FENCE.sub("", text), flags=re.MULTILINE):
            yield re.sub(r"`[^`\n]*`", "", section), section
    elif path.suffix == ".py":
        block = []
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                block.append(token.string)
                continue
            if block and token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                yield LITERAL.sub("", "\n".join(block)), "\n".join(block)
                block = []
            if token.type == tokenize.STRING:
                body = token.string.lstrip("rbuRBUfF")
                body = body[3:-3] if body[:3] in ('"""', "'''") else body[1:-1]
                yield LITERAL.sub("", body), body
        yield LITERAL.sub("", "\n".join(block)), "\n".join(block)
    else:
        for paragraph in re.split(r"\n\s*\n", text):
            yield paragraph, paragraph


def report_holds(root: Path, cited: str, value: float, decimals: int) -> bool:
    """Whether `cited` is a real (not dry-run) gpu_check.json of the repository with a number that shows as `value`."""
    path = (root / cited).resolve()
    if not path.is_file() or not path.is_relative_to(root.resolve()):
        return False
    report = json.loads(path.read_text())
    if report.get("dry_run") is not False:
        return False

    def numbers(node):
        if isinstance(node, dict):
            for item in node.values():
                yield from numbers(item)
        elif isinstance(node, list):
            for item in node:
                yield from numbers(item)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield float(node)
    return any(round(number, decimals) == value or round(40 * number, decimals) == value
               for number in numbers(report))


def unsourced(path: Path, text: str, root: Path = ROOT) -> list[str]:
    """The rate figures of the file that are neither targets, nor CPU figures naming their CPU, nor cited from a
    gpu_check report that holds them."""
    found = []
    for prose, raw in contexts(path, text):
        for figure in RATE.finditer(prose):
            if TARGET.search(prose[max(0, figure.start() - 20):figure.start()]) or CPU_SOURCE.search(raw):
                continue
            value, decimals = float(figure[1].replace(",", "") + (figure[2] or "")), len(figure[2] or ".") - 1
            if any(report_holds(root, cited, value, decimals) for cited in REPORT.findall(raw)):
                continue
            found.append(f"{path.name}: {figure[0]!r}")
    return found


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    names = listed.stdout.split() if listed.returncode == 0 else \
        [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if ".git" not in p.parts]
    return [ROOT / name for name in names
            if Path(name).suffix in (".md", ".py", ".yaml", ".txt", ".toml", ".cfg") and not name.startswith("tests/")]


def test_no_speed_figure_in_the_code_or_docs_lacks_its_source():
    files = repository_files()
    assert any(path.name == "performance.md" for path in files) and len(files) > 50
    assert [line for path in files for line in unsourced(path, path.read_text())] == []


PLANTED = "1,328 aggregate steps/s"


def test_a_planted_figure_is_caught_where_the_code_and_docs_have_theirs():
    # The comment the launchers had, quoting a stand-alone probe's H100 rates as if sparsesweep had measured them.
    launcher = ROOT / "hydra_plugins" / "sparsesweep_launcher" / "launchers.py"
    comment = f"# Probes on an H100 (BasicNet, batch 40, one graph):\n# {PLANTED} at 8 runs, 1,338 at 16\nK = 8\n"
    assert unsourced(launcher, launcher.read_text() + comment) == [f"launchers.py: {PLANTED!r}"]
    performance = ROOT / "docs" / "performance.md"
    text = performance.read_text()
    gpu_section = text.index("### GPU figures")
    planted = text[:gpu_section] + f"A pack of 8 reaches {PLANTED} on an H100.\n\n" + text[gpu_section:]
    assert unsourced(performance, planted) == [f"performance.md: {PLANTED!r}"]
    # The same page's CPU figures stand: their section names the CPU they were measured on.
    assert "img/s" in text[text.index("## CPU benchmarks"):] and unsourced(performance, text) == []
    # A figure in a code string is a claim too; a format string is not.
    assert unsourced(Path("x.py"), f'RATE = "{PLANTED}"\nLINE = f"{{rate:.1f}} steps/s"\n') == [f"x.py: {PLANTED!r}"]


@pytest.mark.parametrize("sentence, flagged", [
    ("packs ≥ 1,300 aggregate steps/s on one GPU", False),
    ("at the packs' target of 1,300 aggregate steps/s, about 8 minutes", False),
    ("1,300 aggregate steps/s, above the target", True),
    ("the console shows `812/4060 steps 52.1 steps/s`", False),
    ("```\n#3 epoch 2/10 812/4060 steps 52.1 steps/s\n```", False),
    ("A pack of 8 ran at 1,328.4 steps/s on a GPU.", True),
    ("Measured on an idle 2-core CPU: 406 img/s.", False)])
def test_what_counts_as_a_target_a_sample_or_a_claim(sentence, flagged):
    assert bool(unsourced(Path("page.md"), f"# A page\n\n{sentence}\n")) == flagged


def test_a_gpu_figure_stands_only_on_a_real_gpu_check_report_that_holds_it(tmp_path):
    def report(name, dry_run, rate):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gpu_check.json").write_text(json.dumps(
            {"dry_run": dry_run, "rows": {"(c) pack of 8": {"aggregate_steps_per_s_with_host": rate}}}))
        return f"{name}/gpu_check.json"

    measured, dry = report("h100", False, 1328.43), report("cpu", True, 1328.43)

    def page(cited, figure="1,328.4"):
        return f"# GPU\n\nA pack of 8: {figure} aggregate steps/s (gpu_check report: `{cited}`).\n"
    assert unsourced(Path("p.md"), page(measured), root=tmp_path) == []
    assert unsourced(Path("p.md"), page(measured, "1,400"), root=tmp_path)  # not what the report holds
    assert unsourced(Path("p.md"), page(dry), root=tmp_path)  # a dry run measures no GPU
    assert unsourced(Path("p.md"), page("missing/gpu_check.json"), root=tmp_path)
