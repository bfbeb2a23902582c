"""The iomem resource tree (``kernel/resource.c``) and its ``/proc/iomem`` rendering.

``walk_system_ram_res`` walks the tree the way ``find_next_iomem_res`` does: depth first, every
resource whose flags say System RAM (in ``/proc/iomem`` terms: a name starting with ``System RAM``,
which covers driver-managed ``System RAM (kmem)`` too), clipped to the window, in address order.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter, le, lt

__all__ = [
    "CRASH_KERNEL",
    "SYSTEM_RAM",
    "Resource",
    "iomem_render",
    "parse_iomem",
    "system_ram_ranges",
    "walk_system_ram_res",
]

SYSTEM_RAM = "System RAM"
#: a resource's start and end, read at C speed (the sort key of a children list)
_START = attrgetter("start")
_END = attrgetter("end")
CRASH_KERNEL = "Crash kernel"

_LINE = re.compile(r"^( *)([0-9a-f]{4,16})-([0-9a-f]{4,16}) : (.*)$")
#: ``MAX_PHYSMEM_BITS`` with 5-level paging on x86_64, the widest of any architecture we model;
#: ``iomem_resource.end`` is ``(1 << x86_phys_bits) - 1`` and no resource lies above it
PHYS_ADDR_BITS = 52


@dataclass(slots=True)
class Resource:
    """``struct resource``: an inclusive ``[start, end]`` range with a name and children."""

    start: int
    end: int
    name: str
    children: list[Resource] = field(default_factory=list)
    #: the last full System RAM walk of this tree: (tree generation, children list, its length, ranges)
    _ram: tuple[int, list[Resource], int, tuple[tuple[int, int], ...]] | None = field(
        default=None, repr=False, compare=False)
    #: the children's starts and ends as last looked at: (children list, its length, starts,
    #: ends), kept only while they are in address order without overlaps
    _order: tuple[list[Resource], int, list[int], list[int]] | None = field(
        default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def is_system_ram(self) -> bool:
        return self.name.startswith(SYSTEM_RAM)

    def walk(self) -> Iterator[tuple[int, Resource]]:
        """(depth, resource) for every descendant, depth first, in tree order (the root excluded)."""
        stack: list[tuple[int, Iterator[Resource]]] = [(0, iter(self.children))]
        while stack:
            depth, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                continue
            yield depth, nxt
            if nxt.children:
                stack.append((depth + 1, iter(nxt.children)))

    def find(self, name: str) -> list[Resource]:
        return [r for _, r in self.walk() if r.name == name]

    def insert(self, res: Resource) -> None:
        """``insert_resource``: place ``res`` at the deepest level that contains it; it adopts
        the siblings it covers. Raises ``ValueError`` on a partial overlap.

        Siblings in address order without overlaps (as the kernel keeps them, and as every tree
        the model builds or reads has them) are searched by bisection; any other list is walked.
        """
        _changed()
        children = self.children
        if len(children) > 8 and res.start <= res.end:
            order = self._order
            if order is None or order[0] is not children or order[1] != len(children):
                starts, ends = list(map(_START, children)), list(map(_END, children))
                ordered = all(map(le, starts, ends)) and all(map(lt, ends[:-1], starts[1:]))
                order = self._order = (children, len(children), starts, ends) if ordered else None
            if order is not None:
                self._insert_ordered(res, order[2], order[3])
                return
        self._insert_any(res)

    def _insert_ordered(self, res: Resource, starts: list[int], ends: list[int]) -> None:
        """:meth:`insert` over siblings sorted by address that do not overlap (``starts`` and
        ``ends`` are theirs): at most one can hold ``res``; those it covers are a run."""
        children = self.children
        i = bisect.bisect_right(starts, res.start) - 1
        if i >= 0 and res.end <= ends[i] and (starts[i], ends[i]) != (res.start, res.end):
            children[i].insert(res)
            return
        lo = bisect.bisect_left(starts, res.start)
        hi = bisect.bisect_right(starts, res.end)
        k = bisect.bisect_right(ends, res.end, lo, hi)
        # the sibling before the run reaching into res, then the first one in it reaching past it
        for j in (lo - 1, k):
            if 0 <= j < hi and not lo <= j < k and not (ends[j] < res.start or starts[j] > res.end):
                c = children[j]
                raise ValueError(
                    f"{res.name} [{res.start:#x}-{res.end:#x}] partially overlaps {c.name} [{c.start:#x}-{c.end:#x}]"
                )
        res.children.extend(children[lo:k])
        res.children.sort(key=_START)
        res._order = None
        self.children = [*children[:lo], res, *children[k:]]
        self._order = (self.children, len(self.children), [*starts[:lo], res.start, *starts[k:]],
                       [*ends[:lo], res.end, *ends[k:]])

    def _insert_any(self, res: Resource) -> None:
        """:meth:`insert` over siblings in any order."""
        for child in self.children:
            if child.start <= res.start and res.end <= child.end and (child.start, child.end) != (res.start, res.end):
                child.insert(res)
                return
        adopted = [c for c in self.children if res.start <= c.start and c.end <= res.end]
        for c in self.children:
            if adopted and c in adopted:
                continue
            if not (c.end < res.start or c.start > res.end):
                raise ValueError(
                    f"{res.name} [{res.start:#x}-{res.end:#x}] partially overlaps {c.name} [{c.start:#x}-{c.end:#x}]"
                )
        res.children.extend(adopted)
        res.children.sort(key=_START)
        res._order = None
        kept = [c for c in self.children if c not in adopted] if adopted else [*self.children]
        kept.append(res)
        kept.sort(key=_START)
        self.children = kept

    def remove(self, start: int, end: int, name: str) -> Resource:
        """``release_resource`` of the resource with that range and name (its children go with it)."""
        _changed()
        for i, child in enumerate(self.children):
            if (child.start, child.end, child.name) == (start, end, name):
                return self.children.pop(i)
            if child.start <= start and end <= child.end:
                return child.remove(start, end, name)
        raise KeyError(f"no resource {name} [{start:#x}-{end:#x}]")

    def copy(self) -> Resource:
        return Resource(self.start, self.end, self.name, [c.copy() for c in self.children])


def parse_iomem(text: str, source: str = "/proc/iomem", *, phys_bits: int = PHYS_ADDR_BITS) -> Resource:
    """The tree ``/proc/iomem`` prints (two spaces of indent per level, ``r_show``).

    Only what ``kernel/resource.c`` can hold is accepted: lowercase hex as ``%0*llx`` prints it,
    every child inside its parent, siblings in ascending order without overlapping
    (``__request_resource`` refuses a conflict; so a repeated line is an error), every address
    below ``1 << phys_bits``. Raises ``ValueError`` naming the line on anything else.
    """
    top = (1 << phys_bits) - 1
    root = Resource(0, (1 << 64) - 1, "PCI mem")
    stack: list[Resource] = [root]
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{source}: line {lineno}: not 'start-end : name': {line!r}")
        indent, s, e, name = m.groups()
        if len(indent) % 2:
            raise ValueError(f"{source}: line {lineno}: odd indent of {len(indent)} spaces")
        depth = len(indent) // 2
        if depth > len(stack) - 1:
            raise ValueError(
                f"{source}: line {lineno}: indented {depth} levels under a parent at level {len(stack) - 2}"
            )
        start, end = int(s, 16), int(e, 16)
        if end < start:
            raise ValueError(f"{source}: line {lineno}: end {end:#x} below start {start:#x}")
        if end > top:
            raise ValueError(
                f"{source}: line {lineno}: [{start:#x}-{end:#x}] ends above the {phys_bits}-bit physical "
                f"address space (last address {top:#x})"
            )
        del stack[depth + 1 :]
        parent = stack[depth]
        if parent is not root and not (parent.start <= start and end <= parent.end):
            raise ValueError(
                f"{source}: line {lineno}: [{start:#x}-{end:#x}] lies outside its parent "
                f"{parent.name} [{parent.start:#x}-{parent.end:#x}]"
            )
        if parent.children:
            prev = parent.children[-1]
            if start <= prev.end:
                how = ("repeats" if (prev.start, prev.end) == (start, end) else
                       "overlaps" if start >= prev.start else "is out of order after")
                raise ValueError(
                    f"{source}: line {lineno}: [{start:#x}-{end:#x}] {name} {how} its sibling "
                    f"{prev.name} [{prev.start:#x}-{prev.end:#x}]: no kernel holds such a resource tree"
                )
        res = Resource(start, end, name)
        parent.children.append(res)
        stack.append(res)
    return root


def iomem_render(root: Resource) -> str:
    """``/proc/iomem`` text of the tree (``r_show``: width 8 hex digits at least)."""
    width = 4 if root.end < 0x10000 else 8
    return "".join(
        f"{'  ' * depth}{r.start:0{width}x}-{r.end:0{width}x} : {r.name}\n" for depth, r in root.walk()
    )


#: bumped by every :meth:`Resource.insert` and :meth:`Resource.remove` anywhere, so a cached walk
#: (:func:`walk_system_ram_res`) of a tree is known to be current
_generation = 0


def _changed() -> None:
    global _generation
    _generation += 1


def _collect_ram(children: list[Resource], out: list[tuple[int, int]]) -> None:
    append = out.append
    for r in children:
        if r.name.startswith(SYSTEM_RAM):
            # Anything nested in a System RAM resource ends inside it, so the kernel's cursor has
            # passed it by the time the walk reaches it: no need to descend.
            append((r.start, r.end))
        elif r.children:
            _collect_ram(r.children, out)


def system_ram_ranges(root: Resource) -> tuple[tuple[int, int], ...]:
    """Every System RAM range of the tree, in address order (what :func:`walk_system_ram_res`
    returns for the whole window), as a tuple that stays valid until the tree changes.

    Not a kernel function: the walk is done once per change of the tree, since a tree changes
    only through :meth:`Resource.insert` and :meth:`Resource.remove` (or, while it is built, by
    appending to a children list, which a new root or a longer top-level list shows).
    """
    cached = root._ram
    if (cached is not None and cached[0] == _generation and cached[1] is root.children
            and cached[2] == len(root.children)):
        return cached[3]
    rams: list[tuple[int, int]] = []
    _collect_ram(root.children, rams)
    root._ram = (_generation, root.children, len(root.children), tuple(rams))
    return root._ram[3]


def walk_system_ram_res(root: Resource, start: int = 0, end: int = (1 << 64) - 1) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` of each System RAM resource in the window (``walk_system_ram_res``).

    The kernel restarts ``find_next_iomem_res`` from the top for each hit; because the cursor only
    moves forward and a nested tree's depth-first order is address order, one pass gives the same
    ranges.
    """
    rams = list(system_ram_ranges(root))
    if start == 0 and end == (1 << 64) - 1:
        return rams
    out: list[tuple[int, int]] = []
    cursor = start
    for s, e in rams:
        if e < cursor:
            continue
        if s > end:
            break
        hs = s if s > cursor else cursor
        he = e if e < end else end
        out.append((hs, he))
        if he >= end:
            break
        cursor = he + 1
    return out
