"""The one TVMScript emitter every kernel generator writes with: an indenting line builder.

Why generate text: pattern-sparse kernels bake each pattern's tap offsets into the code as literals, and
TVMScript is the most readable form of the loop nests they need. Generators never count indents: a
``with script.block(header):`` indents what is emitted inside it, and ``parse`` turns the text into a
PrimFunc (``tvm.script.from_source``, through ``parse_cache``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import tvm

from .parse_cache import parse_source

__all__ = ["Script", "buffer_param", "i64_shape"]

INDENT = "    "


def i64_shape(*dims: int) -> str:
    """A shape tuple of int64 literals, as Relax legalization emits them (FuseTIR insists on matching dtypes)."""
    return "(" + ", ".join(f"T.int64({d})" for d in dims) + ",)"


def buffer_param(name: str, shape: Sequence[int], dtype: str = "float32") -> str:
    """A PrimFunc parameter ``name: T.Buffer((T.int64(..), ...), dtype)``."""
    return f"{name}: T.Buffer({i64_shape(*shape)}, '{dtype}')"


class Script:
    """TVMScript source built line by line; ``block`` opens an indented block under a header line."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0

    def line(self, *texts: str) -> Script:
        """Emit each text as one line at the current depth."""
        self._lines.extend(INDENT * self._depth + text for text in texts)
        return self

    def lines(self, texts: Iterable[str]) -> Script:
        return self.line(*texts)

    @contextlib.contextmanager
    def block(self, header: str) -> Iterator[Script]:
        """``header`` (ending in ``:``) then, one level deeper, whatever the ``with`` body emits."""
        self.line(header)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def prim_func(self, name: str, params: Sequence[str], attrs: dict[str, object]) -> Iterator[Script]:
        """``@T.prim_func(s_tir=True) def name(params):`` with ``T.func_attr(attrs)`` first in its body."""
        self.line("@T.prim_func(s_tir=True)")
        with self.block(f"def {name}({', '.join(params)}):"):
            self.line("T.func_attr({" + ", ".join(f"{k!r}: {v!r}" for k, v in attrs.items()) + "})")
            yield self

    @contextlib.contextmanager
    def sblock(self, name: str, loops: str, extents: Sequence[object], axes: str, reads: str, writes: str,
               iters: str | None = None) -> Iterator[Script]:
        """``for loops in T.grid(extents): with T.sblock(name):`` with its axis binding, reads and writes.

        ``axes``: the ``T.axis.remap`` kinds (``"SS"``), or a full binding line when ``iters`` names its vars.
        """
        with self.block(f"for {loops} in T.grid({', '.join(map(str, extents))}):"), \
                self.block(f"with T.sblock('{name}'):"):
            self.line(f"{iters} = {axes}" if iters else f"{_block_vars(loops)} = T.axis.remap('{axes}', [{loops}])")
            self.line(f"T.reads({reads})", f"T.writes({writes})")
            yield self

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"

    def parse(self) -> tvm.tirx.PrimFunc:
        return parse_source(self.text())


def _block_vars(loops: str) -> str:
    """Block iteration vars named after their loops: ``r, j`` -> ``vr, vj``."""
    return ", ".join("v" + v.strip() for v in loops.split(","))
