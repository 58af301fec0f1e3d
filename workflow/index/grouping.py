"""Near-duplicate groups from a k-nearest-neighbour graph, without chaining.

Links: every (image, neighbour) pair of the graph whose exact cosine similarity is at
least `threshold`, in either direction (a neighbour found from one side is enough, so
that 30 copies of one picture all link although each lists only k of the others).
Components of the links are candidate groups. Every member must then reach the
component's centre, the member nearest the mean of its features, at `threshold - slack`
or more; members that do not are taken out and grouped again among themselves by the
same rule, until every group holds. A chain of small steps (A~B, B~C, ... far from A)
therefore cannot make one giant group: whatever is far from the centre leaves it. The
centre rather than the representative: near-copies are mostly edits of one original,
each a step from it and two from each other, and the representative (`pick`, e.g.
`representative_order`: largest original resolution, then largest file, then lowest
id) is often one of the edits (a copy re-saved at a higher JPEG quality is the larger
file); checked against it, a downscaled copy (one step from the original, two from the
re-saved one) left its group. The centre of a star of edits is their original. Each
member's score is its similarity to the representative. The result does not depend on
the order of the input.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def links(ids: np.ndarray, nbrs: np.ndarray, sims: np.ndarray, threshold: float,
          drop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected pairs (a < b) of the graph at or above `threshold`, each once, sorted,
    with their similarity; ids in `drop` (removed images) take part in none. ids [n],
    nbrs/sims [n, k] (-1 for no neighbour)."""
    a = np.repeat(np.asarray(ids, np.int64), nbrs.shape[1])
    b = np.asarray(nbrs, np.int64).ravel()
    s = np.asarray(sims, np.float32).ravel()
    ok = (b >= 0) & (s >= threshold) & (a != b)
    a, b, s = a[ok], b[ok], s[ok]
    if drop is not None and len(drop):
        keep = ~np.isin(a, drop) & ~np.isin(b, drop)
        a, b, s = a[keep], b[keep], s[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-s, hi, lo))  # each pair's highest similarity first
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


def components(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Connected components (of two or more ids) of the pairs, in order of their
    smallest id: (sorted ids, and the pairs inside it)."""
    if not len(a):
        return []
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    parent = np.arange(len(nodes))

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root
    for x, y in zip(inv[:len(a)].tolist(), inv[len(a):].tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    roots = np.array([find(x) for x in range(len(nodes))])
    order = np.argsort(roots, kind="stable")
    node_groups = np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)
    link_roots = roots[inv[:len(a)]]
    link_order = np.argsort(link_roots, kind="stable")
    link_groups = np.split(link_order, np.flatnonzero(np.diff(link_roots[link_order])) + 1)
    return [(nodes[g], a[lg], b[lg]) for g, lg in zip(node_groups, link_groups)]


def group(a: np.ndarray, b: np.ndarray, pick: Callable[[np.ndarray], int],
          vectors: Callable[[np.ndarray], np.ndarray], threshold: float, slack: float,
          close: Callable | None = None) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
    """Groups as (representative, members with the representative first then by
    descending score and id, each member's similarity to the representative, the
    group's centre), the largest first. `vectors(ids)` gives the ids' unit-length
    features; `pick(ids)` chooses the representative among a group's members. Every
    member reaches the centre (the member nearest the mean of its component's features)
    at `threshold - slack`, or is `close(centre, ids, similarities)` to it by another
    measure."""
    floor = threshold - slack
    out = []
    todo = components(a, b)
    while todo:
        ids, ca, cb = todo.pop()
        v = np.asarray(vectors(ids), np.float32)
        centre = int(np.argmax(v @ v.mean(axis=0)))  # the lowest id of equals
        s = v @ v[centre]
        s[centre] = 1.0
        near = s >= floor
        near[centre] = True
        if close is not None:
            near |= close(int(ids[centre]), ids, s)
        if near.sum() >= 2:
            members, mv = ids[near], v[near]
            rep = pick(members)
            scores = mv @ mv[int(np.flatnonzero(members == rep)[0])]
            scores[members == rep] = 1.0
            order = np.lexsort((members, -scores, members != rep))
            out.append((int(rep), members[order], scores[order], int(ids[centre])))
        rest = ids[~near]
        if len(rest) >= 2:  # grouped again among themselves, by the same links
            inside = np.isin(ca, rest) & np.isin(cb, rest)
            todo.extend(components(ca[inside], cb[inside]))
    return sorted(out, key=lambda g: (-len(g[1]), g[0]))


def representative_order(pixels: np.ndarray, file_bytes: np.ndarray, ids: np.ndarray
                         ) -> tuple[int, str]:
    """The representative of a group's ids (pixels and file_bytes aligned with ids): the
    largest original resolution, then the largest file, then the lowest id; and why."""
    order = np.lexsort((ids, -file_bytes, -pixels))
    best = order[0]
    if len(ids) == 1:
        return int(ids[best]), "alone"
    second = order[1]
    if pixels[best] > pixels[second]:
        why = "the largest resolution"
    elif file_bytes[best] > file_bytes[second]:
        why = "the largest file of the largest resolution"
    else:
        why = "the lowest id of the same resolution and file size"
    return int(ids[best]), why
