"""Simulated annealing for the placement heuristic, compiled with numba.

The heuristic's annealer in Python priced a trial through `_State.move` (numpy calls, a heap walk for the
longest paths): some 15,000-20,000 trials per second, so at 80 vnodes × 16 nodes one walk in its share of a
second was too short to get anywhere (the benchmark's worst instances were 15–40 % above the best known).
Here a trial is 0.5–0.8 µs at 40–150 vnodes. A trial moves one vnode (to a random allowed node or to a
neighbour's node), swaps two, or moves a *chain*: a vnode with its movable neighbours on the same node (moving
one end of a heavy edge alone costs traffic, so co-located chains rarely moved one vnode at a time); it is
kept if it gains or with probability exp(−Δ / T), else undone.

* network, load (Σ (used / capacity)²), memory and link overload and move costs change incrementally (the
  moved vnodes' edges, two nodes, the links on the routes of their edges);
* pairs of vnodes that protect each other (`Problem.apart`) never end up in one failure domain by a trial: a
  trial that puts more pairs together than there were is undone whatever it gains; one that separates a pair
  counts a unit of overload less (as `Problem.search_objective` does), so a start with pairs together is repaired;
* the latency term (a longest path, a maximum) is recomputed over the data edges in topological order,
  O(edges), into a second buffer that becomes the current one only when the trial is kept;
* while hot, the objective also counts the mean latency into every sink (a slope on the plateau where several
  critical paths tie and no single move shortens the maximum), fading to nothing as it cools; from an
  overloaded start, overload is priced low at first and at the full penalty by the end.

The schedule is a number of trials (`trials`), so for a given seed the walk is the same whatever the machine's
load, unless the deadline cuts it short (then the remaining trials are compressed into the time left). The
kernel runs in chunks between which the caller's clock is read; each chunk rebuilds its running sums from the
assignment (no floating-point drift).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numba
import numpy as np

from .cost import OVERLOAD_PENALTY, Problem

__all__ = ["anneal", "compile_in_background", "ready", "warm"]

_CHUNK = 8192             # trials per kernel call between two readings of the clock


@numba.njit(cache=True)
def _link_add(link: int, amount: float, load: np.ndarray, cap: np.ndarray, bw: np.ndarray) -> float:
    """Add traffic to a link; returns the change of Σ max(0, load − cap) ÷ bandwidth."""
    before = load[link] - cap[link]
    load[link] += amount
    after = load[link] - cap[link]
    return (max(after, 0.0) - max(before, 0.0)) / bw[link]


@numba.njit(cache=True)
def _move(v, n, a, sc, cpu, used, capacity, cores2, mem, mem_used, mem_cap, mem_scale, nb_ptr, nb_idx, nb_b,
          nb_out, inv_bw, n_nodes, link_ptr, link_idx, link_load, link_cap, link_bw, current, move_cost):
    """Move vnode v to node n, updating the running sums sc = [network, Σ load², memory over, link over, core
    over, moves]."""
    cur = a[v]
    if n == cur:
        return
    net = 0.0
    over = 0.0
    for k in range(nb_ptr[v], nb_ptr[v + 1]):
        j = a[nb_idx[k]]
        b = nb_b[k]
        net += b * (inv_bw[n, j] - inv_bw[cur, j])
        if len(link_cap):
            old = cur * n_nodes + j if nb_out[k] else j * n_nodes + cur
            new = n * n_nodes + j if nb_out[k] else j * n_nodes + n
            for t in range(link_ptr[old], link_ptr[old + 1]):
                over += _link_add(link_idx[t], -b, link_load, link_cap, link_bw)
            for t in range(link_ptr[new], link_ptr[new + 1]):
                over += _link_add(link_idx[t], b, link_load, link_cap, link_bw)
    sc[0] += net
    sc[3] += over
    c = cpu[v]
    sq_before = used[cur] ** 2 / cores2[cur] + used[n] ** 2 / cores2[n]
    core_before = max(used[cur] - capacity[cur], 0.0) + max(used[n] - capacity[n], 0.0)
    used[cur] -= c
    used[n] += c
    sc[1] += used[cur] ** 2 / cores2[cur] + used[n] ** 2 / cores2[n] - sq_before
    sc[4] += max(used[cur] - capacity[cur], 0.0) + max(used[n] - capacity[n], 0.0) - core_before
    m = mem[v]
    if m != 0.0:
        mem_before = (max(mem_used[cur] - mem_cap[cur], 0.0) / mem_scale[cur]
                      + max(mem_used[n] - mem_cap[n], 0.0) / mem_scale[n])
        mem_used[cur] -= m
        mem_used[n] += m
        sc[2] += (max(mem_used[cur] - mem_cap[cur], 0.0) / mem_scale[cur]
                  + max(mem_used[n] - mem_cap[n], 0.0) / mem_scale[n]) - mem_before
    home = current[v]
    if home >= 0 and move_cost[v] != 0.0:
        if n == home:
            sc[5] -= move_cost[v]
        elif cur == home:
            sc[5] += move_cost[v]
    a[v] = n


@numba.njit(cache=True)
def _longest(a, lat_s, lat_d, latency_ms, dist, sinks):
    """Longest latency into every vnode (edges in topological order of their source) into `dist`; returns
    (the largest, Σ over sinks)."""
    dist[:] = 0.0
    for e in range(len(lat_s)):
        s = lat_s[e]
        d = lat_d[e]
        x = dist[s] + latency_ms[a[s], a[d]]
        if x > dist[d]:
            dist[d] = x
    top = 0.0
    for v in range(len(dist)):
        if dist[v] > top:
            top = dist[v]
    total = 0.0
    for s in sinks:
        total += dist[s]
    return top, total


@numba.njit(cache=True)
def _relax(group, k, has_lat, a, latency_ms, dist, top, sink_sum, pos, order, in_ptr, in_src, out_ptr, out_dst,
           is_sink, dirty, log_v, log_d):
    """Update the longest latency into each vnode after group[:k] moved: only the moved vnodes and what lies
    downstream of them, in topological order, stopping where nothing changes (the changed entries are logged
    in log_v / log_d for an undo). Returns (the largest, Σ over sinks, entries logged). The full pass over
    every edge (`_longest`) was some 40 % of a trial at 150 vnodes."""
    m = len(order)
    pending = 0
    for i in range(k):
        x = group[i]
        if not has_lat[x]:
            continue
        if not dirty[x]:
            dirty[x] = True
            pending += 1
        m = min(m, pos[x])
        for t in range(out_ptr[x], out_ptr[x + 1]):
            y = out_dst[t]
            if not dirty[y]:
                dirty[y] = True
                pending += 1
    logged = 0
    rescan = False
    for q in range(m, len(order)):
        if pending == 0:
            break
        x = order[q]
        if not dirty[x]:
            continue
        dirty[x] = False
        pending -= 1
        new = 0.0
        ax = a[x]
        for t in range(in_ptr[x], in_ptr[x + 1]):
            u = in_src[t]
            val = dist[u] + latency_ms[a[u], ax]
            if val > new:
                new = val
        old = dist[x]
        if new != old:
            log_v[logged] = x
            log_d[logged] = old
            logged += 1
            if is_sink[x]:
                sink_sum += new - old
            if new > top:
                top = new
            elif old >= top:
                rescan = True            # the largest may have come down
            dist[x] = new
            for t in range(out_ptr[x], out_ptr[x + 1]):
                y = out_dst[t]
                if not dirty[y]:
                    dirty[y] = True
                    pending += 1
    if rescan:
        top = 0.0
        for v in range(len(dist)):
            if dist[v] > top:
                top = dist[v]
    return top, sink_sum, logged


@numba.njit(cache=True)
def _together(group, k, a, domain, ap_ptr, ap_idx):
    """How many `apart` pairs with a vnode of group[:k] share a failure domain (each pair once)."""
    count = 0
    for i in range(k):
        x = group[i]
        dx = domain[a[x]]
        for t in range(ap_ptr[x], ap_ptr[x + 1]):
            y = ap_idx[t]
            if domain[a[y]] != dx:
                continue
            inside = False
            for q in range(k):
                inside = inside or group[q] == y
            if not inside or x < y:
                count += 1
    return count


@numba.njit(cache=True)
def _kernel(a, best, best_val, movable, has_lat, dom_ptr, dom_idx, cpu, capacity, cores2, load_floor, mem,
            mem_cap, mem_scale, nb_ptr, nb_idx, nb_b, nb_out, inv_bw, link_ptr, link_idx, link_cap, link_bw,
            lat_s, lat_d, latency_ms, sinks, current, move_cost, weights, schedule, begin, end, seed, pos, order,
            in_ptr, in_src, out_ptr, out_dst, is_sink, domain, ap_ptr, ap_idx):
    """Trials `begin` .. `end` of a walk of schedule[0] trials; `a` is the walk's current assignment (updated
    in place), `best` / best_val[0] the best by the true objective. weights = [network, latency, load, latency
    per sink]; schedule = [trials, T hot, T cold, surrogate weight, overload penalty at the start, at the
    end, share of swaps, share of chain moves]. `domain` [N] is each node's failure domain and ap_ptr / ap_idx
    (CSR) each vnode's `apart` partners: sc[6] counts the pairs in one domain, as overload; no trial raises it."""
    np.random.seed(seed)
    n_nodes = len(capacity)
    total, t_hot, t_cold, mu0, pen0, pen1 = schedule[0], schedule[1], schedule[2], schedule[3], schedule[4], schedule[5]
    swap_share, chain_share = schedule[6], schedule[7]
    w_net, w_lat, w_load, w_sink = weights[0], weights[1], weights[2], weights[3]
    used = np.zeros(n_nodes)
    mem_used = np.zeros(n_nodes)
    for v in range(len(a)):
        used[a[v]] += cpu[v]
        mem_used[a[v]] += mem[v]
    link_load = np.zeros(len(link_cap))
    sc = np.zeros(7)                 # network, Σ load², memory over, link over, core over, moves, pairs together
    for v in range(len(a)):
        for k in range(nb_ptr[v], nb_ptr[v + 1]):
            if nb_out[k]:            # each edge once, from its source
                j = a[nb_idx[k]]
                sc[0] += nb_b[k] * inv_bw[a[v], j]
                pair = a[v] * n_nodes + j
                for t in range(link_ptr[pair], link_ptr[pair + 1]):
                    link_load[link_idx[t]] += nb_b[k]
        if current[v] >= 0 and a[v] != current[v]:
            sc[5] += move_cost[v]
    for j in range(n_nodes):
        sc[1] += used[j] ** 2 / cores2[j]
        sc[2] += max(mem_used[j] - mem_cap[j], 0.0) / mem_scale[j]
        sc[4] += max(used[j] - capacity[j], 0.0)
    for t in range(len(link_cap)):
        sc[3] += max(link_load[t] - link_cap[t], 0.0) / link_bw[t]
    for v in range(len(a)):
        for t in range(ap_ptr[v], ap_ptr[v + 1]):
            if v < ap_idx[t] and domain[a[v]] == domain[a[ap_idx[t]]]:
                sc[6] += 1.0
    guard = len(ap_idx) > 0
    dist = np.zeros(len(a))
    top, sink_sum = _longest(a, lat_s, lat_d, latency_ms, dist, sinks)
    dirty = np.zeros(len(a), dtype=np.bool_)
    log_v = np.zeros(len(a), dtype=np.int64)
    log_d = np.zeros(len(a))
    logged = 0
    count = len(movable)
    is_movable = np.zeros(len(a), dtype=np.bool_)
    is_movable[movable] = True
    widest = 2
    for v in range(len(a)):
        widest = max(widest, nb_ptr[v + 1] - nb_ptr[v] + 1)
    group = np.zeros(widest, dtype=np.int64)
    targets = np.zeros(widest, dtype=np.int64)
    origins = np.zeros(widest, dtype=np.int64)
    saved = np.zeros(7)
    temp, mu, pen, now = t_hot, mu0, pen1, 0.0
    for trial in range(begin, end):
        if trial == begin or (trial - begin) % 64 == 0:
            frac = min(trial / total, 1.0)
            temp = t_hot * (t_cold / t_hot) ** frac
            mu = mu0 * (1.0 - frac)
            pen = pen0 * (pen1 / pen0) ** frac if pen0 < pen1 else pen1
            now = (w_net * sc[0] + w_lat * top + w_load * max(sc[1] - load_floor, 0.0) + sc[5]
                   + pen * (sc[2] + sc[3] + sc[4]) + pen1 * sc[6] + mu * w_sink * sink_sum)
        v = movable[np.random.randint(count)]
        av = a[v]
        k = 1                            # the trial moves group[:k], group[i] to target[i]
        group[0] = v
        kind = np.random.random()
        if kind < swap_share:
            u = movable[np.random.randint(count)]
            bu = a[u]
            if (bu == av or not (dom_ok(v, bu, dom_ptr, dom_idx) and dom_ok(u, av, dom_ptr, dom_idx))
                    or used[bu] - cpu[u] + cpu[v] > capacity[bu] + 1e-9
                    or used[av] - cpu[v] + cpu[u] > capacity[av] + 1e-9):
                continue
            targets[0] = bu
            group[1] = u
            targets[1] = av
            k = 2
        else:
            deg = nb_ptr[v + 1] - nb_ptr[v]
            if deg > 0 and np.random.random() < 0.5:
                target = a[nb_idx[nb_ptr[v] + np.random.randint(deg)]]
                if not dom_ok(v, target, dom_ptr, dom_idx):
                    continue
            else:
                target = dom_idx[dom_ptr[v] + np.random.randint(dom_ptr[v + 1] - dom_ptr[v])]
            if target == av:
                continue
            need = cpu[v]
            targets[0] = target
            if kind < swap_share + chain_share:
                # a chain move: v with its movable neighbours on the same node (moving one end of a heavy
                # edge alone costs traffic, so a co-located chain rarely moves one vnode at a time)
                for t in range(nb_ptr[v], nb_ptr[v + 1]):
                    x = nb_idx[t]
                    if a[x] == av and is_movable[x] and dom_ok(x, target, dom_ptr, dom_idx):
                        seen = False
                        for i in range(k):
                            seen = seen or group[i] == x
                        if not seen:
                            group[k] = x
                            targets[k] = target
                            need += cpu[x]
                            k += 1
            if used[target] + need > capacity[target] + 1e-9:
                continue
        saved[:] = sc
        pairs_before = _together(group, k, a, domain, ap_ptr, ap_idx) if guard else 0
        relat = False
        for i in range(k):
            x = group[i]
            origins[i] = a[x]
            relat = relat or has_lat[x]
            _move(x, targets[i], a, sc, cpu, used, capacity, cores2, mem, mem_used, mem_cap, mem_scale, nb_ptr,
                  nb_idx, nb_b, nb_out, inv_bw, n_nodes, link_ptr, link_idx, link_load, link_cap, link_bw, current,
                  move_cost)
        new_top, new_sum = top, sink_sum
        logged = 0
        pairs_after = pairs_before
        if guard:
            pairs_after = _together(group, k, a, domain, ap_ptr, ap_idx)
            sc[6] += pairs_after - pairs_before
        if relat and pairs_after <= pairs_before:
            new_top, new_sum, logged = _relax(group, k, has_lat, a, latency_ms, dist, top, sink_sum, pos, order,
                                              in_ptr, in_src, out_ptr, out_dst, is_sink, dirty, log_v, log_d)
        base = w_net * sc[0] + w_lat * new_top + w_load * max(sc[1] - load_floor, 0.0) + sc[5]
        over = sc[2] + sc[3] + sc[4]
        after = base + pen * over + pen1 * sc[6] + mu * w_sink * new_sum
        delta = after - now
        if pairs_after <= pairs_before and (delta <= 0.0 or np.random.random() < math.exp(-delta / temp)):
            now = after
            top, sink_sum = new_top, new_sum
            true = base + pen1 * (over + sc[6])
            if true < best_val[0] - 1e-12 * max(1.0, abs(best_val[0])):
                best_val[0] = true
                best[:] = a
        else:
            for i in range(logged - 1, -1, -1):
                dist[log_v[i]] = log_d[i]
            for i in range(k - 1, -1, -1):
                _move(group[i], origins[i], a, sc, cpu, used, capacity, cores2, mem, mem_used, mem_cap, mem_scale,
                      nb_ptr, nb_idx, nb_b, nb_out, inv_bw, n_nodes, link_ptr, link_idx, link_load, link_cap,
                      link_bw, current, move_cost)
            sc[:] = saved


@numba.njit(cache=True)
def dom_ok(v: int, n: int, dom_ptr: np.ndarray, dom_idx: np.ndarray) -> bool:
    """Is node n among the nodes vnode v may go to (sorted CSR)?"""
    lo, hi = dom_ptr[v], dom_ptr[v + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if dom_idx[mid] < n:
            lo = mid + 1
        else:
            hi = mid
    return lo < dom_ptr[v + 1] and dom_idx[lo] == n


class _Arrays:
    """The problem's arrays in the kernel's layout and dtypes (rebuilt per walk: O(edges + vnodes × nodes),
    and a caller may change the problem's limits between walks)."""

    def __init__(self, p: Problem) -> None:
        v_count = p.n_vnodes
        f64 = (lambda x: np.ascontiguousarray(x, dtype=np.float64))
        i64 = (lambda x: np.ascontiguousarray(x, dtype=np.int64))
        allowed = p.allowed
        self.dom_ptr = i64(np.concatenate([[0], np.cumsum(allowed.sum(axis=1))]))
        self.dom_idx = i64(np.nonzero(allowed)[1])                  # row-major: sorted per vnode
        ends = np.concatenate([p.src, p.dst])
        other = np.concatenate([p.dst, p.src])
        out = np.concatenate([np.ones(len(p.src), bool), np.zeros(len(p.src), bool)])
        traffic = np.concatenate([p.traffic, p.traffic])
        order = np.argsort(ends, kind="stable")
        self.nb_ptr = i64(np.concatenate([[0], np.cumsum(np.bincount(ends, minlength=v_count))]))
        self.nb_idx, self.nb_out, self.nb_b = i64(other[order]), np.ascontiguousarray(out[order]), f64(traffic[order])
        fwd = np.argsort(p.level[p.lat_src], kind="stable")        # edges into a vnode before edges out of it
        self.lat_s, self.lat_d = i64(p.lat_src[fwd]), i64(p.lat_dst[fwd])
        self.has_lat = np.zeros(v_count, dtype=bool)
        self.has_lat[self.lat_s] = True
        self.has_lat[self.lat_d] = True
        has_out = np.zeros(v_count, dtype=bool)
        has_out[self.lat_s] = True
        has_in = np.zeros(v_count, dtype=bool)
        has_in[self.lat_d] = True
        self.sinks = i64(np.flatnonzero(has_in & ~has_out))
        self.is_sink = np.ascontiguousarray(has_in & ~has_out)
        self.order = i64(p.order)                                    # topological
        self.pos = np.empty(v_count, dtype=np.int64)
        self.pos[self.order] = np.arange(v_count)
        by_dst = np.argsort(p.lat_dst, kind="stable")
        self.in_ptr = i64(np.concatenate([[0], np.cumsum(np.bincount(p.lat_dst, minlength=v_count))]))
        self.in_src = i64(p.lat_src[by_dst])
        by_src = np.argsort(p.lat_src, kind="stable")
        self.out_ptr = i64(np.concatenate([[0], np.cumsum(np.bincount(p.lat_src, minlength=v_count))]))
        self.out_dst = i64(p.lat_dst[by_src])
        self.cpu, self.capacity, self.cores2 = f64(p.cpu), f64(p.capacity), f64(p.cores2)
        self.mem, self.mem_cap = f64(p.mem), f64(p.mem_capacity)
        self.mem_scale = f64(np.maximum(np.asarray(p.memory, dtype=float), 1.0))
        self.inv_bw, self.latency_ms = f64(p.inv_bw), f64(p.latency_ms)
        self.link_ptr, self.link_idx = i64(p.link_ptr), i64(p.link_idx)
        self.link_cap, self.link_bw = f64(p.link_cap), f64(np.maximum(p.link_bw, 1e-12))
        self.current, self.move_cost = i64(p.current), f64(p.move_cost)
        self.domain = i64(p.domain)
        pairs = np.asarray(p.apart, dtype=np.int64).reshape(-1, 2)
        ends, others = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
        by_end = np.argsort(ends, kind="stable")
        self.ap_ptr = i64(np.concatenate([[0], np.cumsum(np.bincount(ends, minlength=v_count))]))
        self.ap_idx = i64(others[by_end])                            # each vnode's partners in `apart`


def anneal(p: Problem, start: np.ndarray, movable: list[int], deadline: float, seed: int, trials: int,
           clock: Callable[[], float], t_range: tuple[float, float] = (0.3, 1e-4), surrogate: float = 1.0,
           swap_share: float = 0.3, chain_share: float = 0.0) -> tuple[np.ndarray, float]:
    """A walk of `trials` trials from `start` (fewer if `deadline` comes first). Returns the best placement by
    `Problem.search_objective` (never worse than `start`) and that objective as the kernel tracked it.
    Temperatures are fractions of the start's cost (overload aside). While the kernel is still being compiled
    in the background (`compile_in_background`), returns `start`: the search goes on without annealing."""
    if not ready():
        warm()  # starts compiling it on a thread
        return start.copy(), p.search_objective(start)
    return _walk(p, start, movable, deadline, seed, trials, clock, t_range, surrogate, swap_share, chain_share)


def _walk(p: Problem, start: np.ndarray, movable: list[int], deadline: float, seed: int, trials: int,
          clock: Callable[[], float], t_range: tuple[float, float], surrogate: float, swap_share: float,
          chain_share: float) -> tuple[np.ndarray, float]:
    first = p.search_objective(start)
    if not movable or trials <= 0:
        return start.copy(), first
    arr = _Arrays(p)
    w = p.weights
    a = start.astype(np.int64).copy()
    best = a.copy()
    over = p.overload(a)
    scale = max(abs(first - OVERLOAD_PENALTY * over), 1e-9)
    best_val = np.array([first])
    pen0 = 10.0 * scale if over > 0 else OVERLOAD_PENALTY
    sinks = arr.sinks
    weights = np.array([w.network, w.latency, w.load, w.latency / max(1, len(sinks))], dtype=np.float64)
    schedule = np.array([float(trials), t_range[0] * scale, t_range[1] * scale, surrogate if len(sinks) else 0.0,
                         min(pen0, OVERLOAD_PENALTY), OVERLOAD_PENALTY, swap_share, chain_share], dtype=np.float64)
    mov = np.asarray(movable, dtype=np.int64)
    done, chunk, began = 0, 0, clock()
    while done < schedule[0]:
        left = deadline - clock()
        if left <= 0:
            break
        if done:                         # compress the rest of the schedule into the time left
            rate = done / max(clock() - began, 1e-9)
            schedule[0] = min(schedule[0], done + rate * left)
        stop = int(min(schedule[0], done + _CHUNK))
        if stop <= done:
            break
        _kernel(a, best, best_val, mov, arr.has_lat, arr.dom_ptr, arr.dom_idx, arr.cpu, arr.capacity, arr.cores2,
                float(p.load_floor), arr.mem, arr.mem_cap, arr.mem_scale, arr.nb_ptr, arr.nb_idx, arr.nb_b,
                arr.nb_out, arr.inv_bw, arr.link_ptr, arr.link_idx, arr.link_cap, arr.link_bw, arr.lat_s,
                arr.lat_d, arr.latency_ms, sinks, arr.current, arr.move_cost, weights, schedule, done, stop,
                (seed * 7919 + chunk) % (2**31 - 1), arr.pos, arr.order, arr.in_ptr, arr.in_src, arr.out_ptr,
                arr.out_dst, arr.is_sink, arr.domain, arr.ap_ptr, arr.ap_idx)
        done = stop
        chunk += 1
    if p.search_objective(best) > first:          # never worse than the start (float noise aside)
        return start.copy(), first
    return best, float(best_val[0])


_background = False                       # never wait for the kernel to compile (a coordinator's searches)
_warming: threading.Thread | None = None  # compiling it on a thread


def compile_in_background() -> None:
    """From now on no search waits for the kernel: the first that wants it starts compiling it (or loading it from
    numba's cache) on a thread, and searches go without annealing until it is ready.

    For a coordinator: on a fresh install compiling takes 20-30 s on a loaded 2-core machine (far longer on a Pi),
    and a coordinator placing a job must answer the client long before that. Lazily, because most coordinators'
    jobs are small enough for the MILP alone, and the compiled kernel costs a process tens of MB."""
    global _background
    _background = True


def ready() -> bool:
    """May a search anneal now? Yes once compiled, and always unless compiling in the background (`warm` then
    compiles it first)."""
    return not _background or bool(getattr(warm, "done", False))


def warm() -> None:
    """Compile (or load from numba's cache) the kernel before a timed search starts; in the background (a thread,
    started once) after `compile_in_background`."""
    global _warming
    if getattr(warm, "done", False):
        return
    if not _background:
        _warm_now()
    elif _warming is None:
        _warming = threading.Thread(target=_warm_now, name="placement-warmup", daemon=True)
        _warming.start()


def _warm_now() -> None:
    from .cost import Problem as _P

    one = np.ones(1)
    p = _P(["a", "b"], ["x", "y"], np.array([0.1, 0.1]), np.array([1.0, 1.0]), np.ones((2, 2), dtype=bool),
           np.array([-1, -1], dtype=np.int64), np.array([0], dtype=np.int64), np.array([1], dtype=np.int64),
           one.copy(), np.ones(1, dtype=bool), np.array([[0.0, 1e-6], [1e-6, 0.0]]),
           np.array([[0.0, 1.0], [1.0, 0.0]]))
    _walk(p, np.array([0, 1], dtype=np.int64), [0, 1], math.inf, 0, 64, lambda: 0.0, (0.3, 1e-4), 1.0, 0.3, 0.0)
    warm.done = True                       # type: ignore[attr-defined]
