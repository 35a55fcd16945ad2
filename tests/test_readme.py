"""The README and the docs/ pages stay true: every `python train.py | sample.py | evaluate.py`
and `scorelab-train | -sample | -evaluate` command in them composes with Hydra (a renamed
group, option or key fails here with the command's text), every script or module they run
exists, and every relative link points to a file. Compose only: nothing is trained, loaded
or downloaded (a `ckpt=...` placeholder is never opened)."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import ROOT
from scorelab.conf import CONF_DIR

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "train", "sample.py": "sample", "evaluate.py": "evaluate",
           "scorelab-train": "train", "scorelab-sample": "sample",
           "scorelab-evaluate": "evaluate"}
PYTHONS = re.compile(r"^(\S*/)?python(3(\.\d+)?)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")

# Commands deliberately not composed, each with why (matched against the command text).
SKIPPED = {
    # docs/training_recipe.md: a template whose overrides are the table's rows below it (each
    # row's overrides are named there one by one, not as one command line)
    "python train.py <overrides> hydra.run.dir=RUN": "template of the recipe table's rows",
}


def fenced_blocks(text):
    """The bodies of the page's ``` code blocks that hold shell (bash, sh, console, none)."""
    for m in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in ("", "bash", "sh", "shell", "console"):
            yield m.group(2)


def shell_lines(block):
    """The block's command lines, continuation lines joined, prompts dropped."""
    for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line and not line.startswith("#"):
            yield line


FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def inline_spans(text):
    """The page's `code` spans outside code blocks, whitespace (line wraps) made single."""
    for m in re.finditer(r"`([^`]+)`", FENCED.sub("", text)):
        yield " ".join(m.group(1).split())


def inline_commands(text):
    """`python train.py ...`-style commands written inline in prose (they may wrap lines)."""
    for code in inline_spans(text):
        if re.match(r"^(\S+=\S+ )*(\S*python\S* \S*(train|sample|evaluate)\.py|"
                    r"scorelab-(train|sample|evaluate))\b", code):
            yield code


def split_commands(line):
    """Shell words of each simple command in ``line`` (split at ;, &&, ||, |; # comments cut)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, commands = [], []
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    commands.append(words)
    return [c for c in commands if c]


def entry_point(words):
    """(config name, Hydra arguments) if ``words`` run one of scorelab's Hydra commands."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]                        # WANDB_MODE=offline python train.py ...
    if not words:
        return None
    if words[0] in SCRIPTS and words[0].startswith("scorelab-"):
        return SCRIPTS[words[0]], words[1:]
    if PYTHONS.match(words[0]) and len(words) > 1 and Path(words[1]).name in SCRIPTS:
        return SCRIPTS[Path(words[1]).name], words[2:]
    return None


def hydra_overrides(args):
    """(overrides, multirun) from a Hydra command's arguments; unknown flags fail."""
    overrides, multirun, it = [], False, iter(args)
    for arg in it:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--cfg", "-c", "--package", "-p", "--info", "-i"):
            next(it, None)
        elif arg in ("--help", "-h", "--hydra-help", "--resolve"):
            pass
        elif arg.startswith("-"):
            raise AssertionError(f"unknown flag {arg!r}")
        else:
            overrides.append(arg)
    return overrides, multirun


def commands_in(text):
    """(command line, config name, arguments) of each scorelab command in a page's text."""
    lines = [line for block in fenced_blocks(text) for line in shell_lines(block)]
    for line in lines + list(inline_commands(text)):
        for words in split_commands(line):
            entry = entry_point(words)
            if entry is not None:
                yield (line, *entry)


def collect():
    """Every documented command: (page, command line, config name, arguments)."""
    return [(page.relative_to(ROOT).as_posix(), *c) for page in PAGES
            for c in commands_in(page.read_text())]


COMMANDS = collect()


def expand(overrides, multirun):
    """Override lists that cover a command's jobs: each value of each swept key in at least
    one of them (job i takes value i of every key, cycling), not every combination -- a
    value that no longer composes fails in any combination, and compose costs ~0.1-1 s."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for raw, o in zip(overrides, parsed):
        if multirun and o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([raw])
    n = max((len(c) for c in choices), default=1)
    return [[c[i % len(c)] for c in choices] for i in range(n)]


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised once on the shipped configs for the whole module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


_COMPOSED = {}


def compose_job(config_name, overrides):
    """The composed config (hydra node included, for hydra.* overrides); each distinct job
    once per session, as several pages repeat a command."""
    key = (config_name, tuple(overrides))
    if key not in _COMPOSED:
        _COMPOSED[key] = compose(config_name, overrides=overrides, return_hydra_config=True)
    return _COMPOSED[key]


def sweeper_params(cfg):
    """The basic sweeper's `hydra.sweeper.params` of an experiment (grid_*), as overrides."""
    sweeper = cfg.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper") or not sweeper.params:
        return []
    return [f"{k}={v}" for k, v in OmegaConf.to_container(sweeper.params).items()]


def test_commands_are_read_as_a_shell_would():
    page = "\n".join([
        "```bash",
        "WANDB_MODE=offline python train.py logger=wandb \\",
        "   trainer.max_steps=5   # a comment",
        "cd /tmp && scorelab-sample ckpt=A 'hydra.run.dir=\"out dir\"'",
        "python benchmarks/x.py --flag",
        "python evaluate.py -m ckpt=A sampler=ddim,dpm_solver sampler.steps=10,20,50",
        "```",
        "```python",
        "python train.py head=never_read",
        "```",
        "Prose with `python train.py head=v",
        "path=vp` wrapped, and `sde=vp` alone.",
    ])
    assert list(commands_in(page)) == [
        ("WANDB_MODE=offline python train.py logger=wandb trainer.max_steps=5   # a comment",
         "train", ["logger=wandb", "trainer.max_steps=5"]),
        ("cd /tmp && scorelab-sample ckpt=A 'hydra.run.dir=\"out dir\"'",
         "sample", ["ckpt=A", 'hydra.run.dir="out dir"']),
        ("python evaluate.py -m ckpt=A sampler=ddim,dpm_solver sampler.steps=10,20,50",
         "evaluate", ["-m", "ckpt=A", "sampler=ddim,dpm_solver", "sampler.steps=10,20,50"]),
        ("python train.py head=v path=vp", "train", ["head=v", "path=vp"]),
    ]
    overrides, multirun = hydra_overrides(["-m", "ckpt=A", "a=1,2", "b=x,y,z", "c=[1,2]"])
    assert multirun and expand(overrides, multirun) == [
        ["ckpt=A", "a=1", "b=x", "c=[1,2]"], ["ckpt=A", "a=2", "b=y", "c=[1,2]"],
        ["ckpt=A", "a=1", "b=z", "c=[1,2]"]]


def test_a_stale_override_is_caught(hydra_conf):
    compose_job("train", ["sde=vp", "path.schedule=cosine"])
    with pytest.raises(Exception, match="sde.schedule"):
        compose_job("train", ["sde=vp", "sde.schedule=cosine"])


def test_the_pages_have_commands():
    pages = {page for page, *_ in COMMANDS}
    assert "README.md" in pages and len(COMMANDS) >= 50, sorted(pages)


@pytest.mark.parametrize("page,line,config_name,args", COMMANDS,
                         ids=[f"{c[0]}:{i}" for i, c in enumerate(COMMANDS)])
def test_command_composes(hydra_conf, page, line, config_name, args):
    if line in SKIPPED:
        pytest.skip(SKIPPED[line])
    overrides, multirun = hydra_overrides(args)
    job = overrides
    try:
        for job in expand(overrides, multirun):
            cfg = compose_job(config_name, job)
            extra = sweeper_params(cfg) if multirun else []
            for grid_job in expand(job + extra, True) if extra else []:
                compose_job(config_name, grid_job)     # the jobs an experiment's grid adds
    except Exception as e:                       # noqa: BLE001  (any failure names the command)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        pytest.fail(f"{page}: `{line}` does not compose ({type(e).__name__}: {first}; "
                    f"job overrides {job})", pytrace=False)


def other_programs():
    """(page, what) for every `python path/to/script.py` and `python -m module` in the pages."""
    for page in PAGES:
        text = page.read_text()
        lines = [line for block in fenced_blocks(text) for line in shell_lines(block)]
        for line in lines + list(inline_spans(text)):
            for m in re.finditer(r"\bpython3? (-m ([\w.]+)|([\w/.-]+\.py))", line):
                yield page.relative_to(ROOT).as_posix(), m.group(2) or m.group(3)


def test_scripts_and_modules_exist():
    missing = set()
    for page, what in other_programs():
        if what.endswith(".py"):
            ok = (ROOT / what).is_file()
        else:
            ok = what in ("pip", "pytest", "venv") or importlib.util.find_spec(what) is not None
        if not ok:
            missing.add(f"{page}: {what}")
    assert not missing, sorted(missing)


def relative_links(text):
    """(file, anchor) of the page's markdown links and images that are not URLs; file is ""
    for an anchor on the page itself."""
    text = FENCED.sub("", text)                  # no links in code blocks
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            file, _, anchor = target.partition("#")
            yield file, anchor


def anchors(path):
    """GitHub's anchors of a markdown file's headings (lower case, punctuation dropped,
    spaces as hyphens)."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", FENCED.sub("", path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-")
            for h in headings}


def test_relative_links_point_to_files():
    broken = []
    for page in PAGES:
        for file, anchor in relative_links(page.read_text()):
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{page.relative_to(ROOT)}: {file}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {file}#{anchor} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / f).resolve() for f, _ in relative_links(readme.read_text())}
    topics = ["configuration", "samplers", "guidance", "latent", "sweeps", "evaluation",
              "results", "library", "development"]
    missing = [t for t in topics if (ROOT / "docs" / f"{t}.md").resolve() not in linked]
    assert not missing, missing
