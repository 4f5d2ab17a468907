"""Pages generated from the code when the site is built (mkdocs-gen-files): one page per method
(its module docstring and its config fields), the backbone and dataset tables, and the table of
paper configs. Nothing here is written by hand twice: the docstrings, the pydantic config models,
the registries and the configs' headers are the sources."""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

import mkdocs_gen_files
import yaml
from pydantic_core import to_jsonable_python

from promptcl.config import BackboneConfig, DataConfig, OutputConfig, RunConfig, TrainConfig
from promptcl.registry import backbones, datasets, methods

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def markdown(doc: str) -> str:
    """A docstring as Markdown: a blank line before each list (Python-Markdown needs one) and
    nested items indented by four spaces instead of two."""
    out: list[str] = []
    for line in doc.splitlines():
        item = re.match(r"^( *)- ", line)
        if item:
            depth = len(item.group(1)) // 2
            line = "    " * depth + line.lstrip()
            if out and out[-1].strip() and not re.match(r"^ *- ", out[-1]) and depth == 0:
                out.append("")
        out.append(line)
    return "\n".join(out)


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_table(config: type) -> str:
    return table(config.model_fields)


def table(fields: dict) -> str:
    rows = ["| key | default | description |", "|---|---|---|"]
    for name, field in fields.items():
        default = json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))
        rows.append(f"| `{name}` | `{cell(default)}` | {cell(field.description or '')} |")
    return "\n".join(rows)


def method_pages() -> list[tuple[str, str]]:
    """methods/<name>.md for every registered method; returns (title, file) for the nav."""
    pages = []
    for name in methods.names():
        cls = methods.get(name)
        module = sys.modules[cls.__module__]
        doc = inspect.getdoc(module) or ""
        title, _, body = doc.partition("\n")
        with mkdocs_gen_files.open(f"methods/{name}.md", "w") as page:
            page.write(f"# {title}\n\n")
            page.write(f"`method.name: {name}` (`{cls.__module__}.{cls.__name__}`)\n\n")
            page.write(f"{markdown(body.strip())}\n\n")
            inferred = [
                f"`{key}`"
                for key, field in cls.Config.model_fields.items()
                if "[inferred" in (field.description or "")
            ]
            page.write(f"## Configuration (`method.*`)\n\n{config_table(cls.Config)}\n\n")
            if inferred:
                page.write(
                    "Keys whose default neither the paper nor the official code settles "
                    f"(marked [inferred] above): {', '.join(inferred)}.\n"
                )
        pages.append((name, f"{name}.md"))
    with mkdocs_gen_files.open("methods/index.md", "w") as page:
        page.write("# Methods\n\n")
        page.write(
            "Each page is the method's module docstring (the paper, the equations, the defaults "
            "with their sources, every departure from the official code and every [inferred] "
            "choice) and its config fields.\n\n| method | what it is |\n|---|---|\n"
        )
        for name, file in pages:
            page.write(f"| [`{name}`]({file}) | {cell(methods.describe(name))} |\n")
    with mkdocs_gen_files.open("methods/SUMMARY.md", "w") as nav:
        nav.write("* [Overview](index.md)\n")
        nav.writelines(f"* [{name}]({file})\n" for name, file in pages)
    return pages


def components_page() -> None:
    with mkdocs_gen_files.open("components.md", "w") as page:
        page.write("# Backbones and datasets\n\n")
        page.write(
            "Every registered name, as `promptcl list` shows it. A backbone is chosen with "
            "`backbone.name`, a dataset with `data.name`.\n\n"
        )
        for title, registry in (("Backbones", backbones), ("Datasets", datasets)):
            page.write(f"## {title}\n\n| name | description |\n|---|---|\n")
            for name in registry.names():
                page.write(f"| `{name}` | {cell(registry.describe(name))} |\n")
            page.write("\n")
        page.write('--8<-- "docs/snippets/components.md"\n')


def config_page() -> None:
    """Every key of a run config outside ``method`` (whose keys are on each method's page)."""
    with mkdocs_gen_files.open("config.md", "w") as page:
        page.write("# Configuration keys\n\n")
        page.write(
            "A run config has the sections below and `method`, whose keys depend on the method "
            "(see its page under Methods). Every key is checked: a misspelled one is an error "
            "naming the closest valid key. `--set section.key=value` overrides one.\n\n"
        )
        top = {k: f for k, f in RunConfig.model_fields.items() if k not in (*SECTIONS, "method")}
        page.write("## Top level\n\n" + table(top) + "\n\n")
        for section, model in zip(
            SECTIONS, (DataConfig, BackboneConfig, TrainConfig, OutputConfig), strict=True
        ):
            page.write(f"## `{section}`\n\n{config_table(model)}\n\n")


SECTIONS = ("data", "backbone", "train", "output")


def header(path: Path) -> tuple[str, str]:
    """A config's first header sentence (what it is) and its ``# Reported:`` line."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    reported = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Reported:")), ""
    )
    first = []  # the lines of the header's first sentence
    for line in lines:
        first.append(line)
        if line.endswith("."):
            break
    return " ".join(first), reported


def reproduce_page() -> None:
    with mkdocs_gen_files.open("reproduce.md", "w") as page:
        page.write('--8<-- "docs/snippets/reproduce.md"\n\n')
        page.write("| config | what it runs | reported by the paper | backbone weights |\n")
        page.write("|---|---|---|---|\n")
        for path in sorted(CONFIGS.glob("*.yaml")):
            about, reported = header(path)
            config = yaml.safe_load(path.read_text())
            backbone = (config.get("backbone") or {}).get("name", "")
            if not backbone and "base" in config:  # an ablation row: its base names it
                base = yaml.safe_load((path.parent / config["base"]).read_text())
                backbone = base["backbone"]["name"]
            weights = backbones.describe(backbone) if backbone else ""
            page.write(
                f"| `{path.name}` | {cell(about)} | {cell(reported or '-')} | "
                f"`{backbone}`: {cell(weights)} |\n"
            )


method_pages()
config_page()
components_page()
reproduce_page()
