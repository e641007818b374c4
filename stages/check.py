"""Stage `check`: judge params.yaml and the paths it names before DVC deletes any output.

Every stage of dvc.yaml, spa/dvc.yaml and comparison/dvc.yaml depends on the marker this
writes, so `dvc repro` (and `dvc exp run`) runs it first whenever params.yaml changed; a bad
value stops the run here, with every other stage's outputs still in place. The marker's text
is constant: a passing check never reruns anything downstream. No model, no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.errors import user_errors
from icon2.core.io import atomic_path
from icon2.core.params import load_params
from icon2.core.preflight import MARKER_TEXT, Declared, preflight


def declared() -> Declared:
    """What the DVC stages of this repository write and read (nothing outside one)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            outs = [Path(o.fs_path).resolve() for o in repo.index.outs]
            deps = [Path(d.fs_path).resolve() for d in repo.index.deps if d.protocol == "local"]
    except NotDvcRepoError:
        return Declared([], [])
    return Declared(outs, deps)


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="The model stage's output (read if there).")],
    out: Annotated[Path, typer.Option(help="The marker to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    preflight(p, model_dir, declared, Path.cwd())
    with atomic_path(out) as tmp:
        tmp.write_text(MARKER_TEXT, encoding="utf-8")
    typer.echo(f"check: {params} and the paths it names are usable -> {out}")


if __name__ == "__main__":
    typer.run(main)
