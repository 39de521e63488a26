"""Replay of the activations a trial cannot change: one-shot trials skip the unchanged prefix of the network.

A trial (:meth:`~mmfisher.core.masks.ChannelMasks.trial`) changes the computation of a few modules only: the
readers whose input weights it zeroes and the renormalizing norms it gives masked channels (its
``changed_modules``). In the forward of a calibration batch, every module call made before the first changed
module starts is the very call of the unchanged forward: the same inputs, the same weights, the same random
draws (the measurements seed torch's RNG per batch). So a container (a module with children) whose subtree holds
no changed module, called before that point, returns what it returned in the unchanged forward. For a unit deep in
the network (a detector's head, a backbone's last stage) the whole prefix before it costs nothing.

:class:`ActivationReplay` records the containers' outputs in one unchanged pass per batch (:meth:`record`) and, in
each trial (:meth:`replay`), returns copies of them instead of computing them while that holds. It is exact by
construction (the replayed values are bit-identical to a recomputation on a deterministic device); a container is
never replayed when:

* its subtree holds a changed module, or a changed module (or an owner of a tensor the trial changed: tied
  weights) has started in this forward (its forward pre-hook marks the forward "diverged");
* some module strictly inside it has hooks (a feature recorder, e.g. a distiller's anchors, must see its call);
  the global module hooks are set (then nothing is replayed);
* its forward drew from torch's RNG in the recording pass (its skipped draws would shift the later ones), or
  returned something other than tensors in (nested) tuples, lists and dicts (with None, numbers and strings);
* its recorded output did not fit the memory ``limit_bytes`` (shallow containers are kept first: one replay of a
  backbone saves every stage in it).

Invariant methods (``invariant``: ``(module, method name)`` pairs whose results depend on their arguments only,
and those on the batch only, never on a weight: a detector head's anchors and target assignment) are recorded
the same way and answered from the records in every trial, also after the forward diverged (the caller vouches
for the invariance; the RNG and copy conditions above still apply).

The modules' call counters stay aligned: a replayed call advances its descendants' counters by the calls they made
inside it when it was recorded. Plain PyTorch; nothing here imports OpenMMLab.
"""
import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ['ActivationReplay']

_LEAF_TYPES = (type(None), bool, int, float, str)
_MISSING = object()


def _copy(value: Any) -> Tuple[Optional[Any], int]:
    """(a detached copy of ``value``, its tensors' bytes); (None, -1) if it holds something else than tensors in
    tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone(), value.numel() * value.element_size()
    if isinstance(value, _LEAF_TYPES):
        return value, 0
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        out, size = [], 0
        for v in value:
            c, n = _copy(v)
            if n < 0:
                return None, -1
            out.append(c)
            size += n
        return type(value)(out), size
    if type(value) is dict:
        out_d, size = {}, 0
        for k, v in value.items():
            c, n = _copy(v)
            if n < 0:
                return None, -1
            out_d[k] = c
            size += n
        return out_d, size
    return None, -1


def _rng_state() -> List[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    return states


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, '_backward_pre_hooks', None))


def _global_hooks() -> bool:
    from torch.nn.modules import module as m
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or getattr(m, '_global_backward_pre_hooks', None))


class ActivationReplay:
    """Records the containers' outputs of the unchanged forwards and replays them in trials (module docstring).

    Args:
        model: the module whose forwards are recorded (its strict descendants with children are the candidates).
        limit_bytes: the memory the recorded outputs may take, over all batches. 0 turns replay off.

    Use::

        replay = ActivationReplay(model, 2 ** 30)
        with replay.installed():
            for i, batch in enumerate(batches):
                with replay.record(i, len(batches)):
                    loss_fn(batch)
            with masks.trial(alive):
                for i, batch in enumerate(batches):
                    with replay.replay(i, masks.changed_modules):
                        loss_fn(batch)
    """

    def __init__(self, model: nn.Module, limit_bytes: int, invariant: Sequence[Tuple[nn.Module, str]] = ()
                 ) -> None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
            raise ValueError(f'limit_bytes={limit_bytes!r} must be an int >= 0 (0 turns replay off)')
        for pair in invariant:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], nn.Module)
                    and isinstance(pair[1], str) and callable(getattr(pair[0], pair[1], None))):
                raise TypeError(f'invariant: {pair!r} must be a (module, method name) pair naming a method of the '
                                'module, e.g. (model.bbox_head, "get_targets")')
        self.model = model
        self.limit_bytes = limit_bytes
        self._depth: Dict[int, int] = {}
        self.candidates: List[Tuple[str, nn.Module]] = []
        for name, module in model.named_modules():  # each module once, at its first place
            if (module is not model and any(True for _ in module.children()) and 'forward' not in module.__dict__
                    and type(module).forward is not nn.Module.forward):
                self._depth[len(self.candidates)] = name.count('.')
                self.candidates.append((name, module))
        # id(module) -> the candidates holding it (itself included), along every path (a shared module sits in
        # several containers)
        self._ancestors: Dict[int, Set[int]] = {}
        for i, (_, c) in enumerate(self.candidates):
            for d in c.modules():
                self._ancestors.setdefault(id(d), set()).add(i)
        self._owners: Dict[int, List[nn.Module]] = {}  # id(tensor) -> modules holding it directly
        for module in model.modules():
            for t in list(module._parameters.values()) + list(module._buffers.values()):
                if t is not None:
                    self._owners.setdefault(id(t), []).append(module)
        # invariant methods: indices after the containers, kept before any container within the memory limit
        self._methods: List[Tuple[nn.Module, str]] = []
        for module, method in invariant:
            if any(m is module and n == method for m, n in self._methods):
                continue  # given twice
            self._depth[len(self.candidates) + len(self._methods)] = -1
            self._methods.append((module, method))
        self._first_method = len(self.candidates)
        names = {id(m): n for n, m in model.named_modules()}
        self._names = [n for n, _ in self.candidates] + [
            f'{names.get(id(m), type(m).__name__)}.{method}()' for m, method in self._methods]
        self._hooked: Set[int] = set()  # hooks strictly inside (found when installed): never replayed
        self._store: Dict[Tuple[int, int, int], Tuple[Any, np.ndarray]] = {}
        self._bytes: Dict[Tuple[int, int, int], int] = {}
        self._refused: Set[int] = set()  # drew RNG, or an output that cannot be copied
        self._kept: Optional[Set[int]] = None  # after the first batch: the candidates within the memory limit
        self._mode: Optional[str] = None
        self._batch = -1
        self._calls = np.zeros(len(self._names), dtype=np.int64)
        self._dirty: Set[int] = set()
        self._diverged = False
        self.replayed = 0  # calls answered from the records
        self.computed = 0  # candidate calls computed in trials
        self.enabled = limit_bytes > 0 and bool(self._names) and not _global_hooks()

    @property
    def stored_bytes(self) -> int:
        return int(sum(self._bytes.values()))

    def stats(self) -> Dict[str, Any]:
        """What was recorded and replayed (for a results file)."""
        recorded = {k[0] for k in self._store}
        return {'candidates': len(self.candidates), 'recorded': len({i for i in recorded if i < self._first_method}),
                'invariant_methods': [self._names[i] for i in range(self._first_method, len(self._names))],
                'invariant_recorded': len({i for i in recorded if i >= self._first_method}),
                'stored_mb': round(self.stored_bytes / 2 ** 20, 3), 'limit_mb': round(self.limit_bytes / 2 ** 20, 3),
                'calls_replayed': self.replayed, 'calls_computed': self.computed,
                'refused': sorted(self._names[i] for i in self._refused),
                'hooked': sorted(self._names[i] for i in self._hooked)}

    # ------------------------------------------------------------------ patching
    @contextlib.contextmanager
    def installed(self) -> Iterator['ActivationReplay']:
        """Every candidate's ``forward`` wrapped for the block (restored after; a no-op while disabled). Outside
        :meth:`record` and :meth:`replay` the wrapped forwards compute as usual."""
        if not self.enabled:
            yield self
            return
        # a candidate with hooks strictly inside is never recorded (its inner hooks must see their calls)
        self._hooked = {i for i, (_, m) in enumerate(self.candidates)
                        if any(_has_hooks(d) for d in m.modules() if d is not m)}
        patched = []
        try:
            for i, (_, m) in enumerate(self.candidates):
                m.forward = self._wrap(i, m.forward)  # type: ignore[method-assign]
                patched.append((m, 'forward', _MISSING))
            for j, (m, method) in enumerate(self._methods):
                previous = m.__dict__.get(method, _MISSING)  # an instance attribute already there is restored
                setattr(m, method, self._wrap(self._first_method + j, getattr(m, method)))
                patched.append((m, method, previous))
            yield self
        finally:
            for m, method, previous in patched:
                if previous is _MISSING:
                    delattr(m, method)
                else:
                    setattr(m, method, previous)
            self._mode = None

    def _wrap(self, index: int, forward: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self._mode is None:
                return forward(*args, **kwargs)
            call = int(self._calls[index])
            self._calls[index] += 1
            key = (index, self._batch, call)
            if self._mode == 'record':
                return self._record_call(index, key, forward, args, kwargs)
            invariant = index >= self._first_method
            entry = None if (not invariant and (self._diverged or index in self._dirty)) else self._store.get(key)
            if entry is None:
                self.computed += 1
                return forward(*args, **kwargs)
            value, inner = entry
            self._calls += inner  # the descendants' calls it would have made
            self.replayed += 1
            return _copy(value)[0]
        return wrapped

    def _record_call(self, index: int, key: Tuple[int, int, int], forward: Any, args: tuple, kwargs: dict) -> Any:
        if index in self._refused or index in self._hooked or (self._kept is not None and index not in self._kept):
            return forward(*args, **kwargs)
        rng = _rng_state()
        before = self._calls.copy()
        out = forward(*args, **kwargs)
        after = _rng_state()
        if len(rng) != len(after) or not all(torch.equal(a, b) for a, b in zip(rng, after)):
            self._refuse(index)
            return out
        value, size = _copy(out)
        if size < 0:
            self._refuse(index)
            return out
        inner = self._calls - before
        inner[index] = 0
        self._store[key] = (value, inner)
        self._bytes[key] = size
        return out

    def _refuse(self, index: int) -> None:
        self._refused.add(index)
        for key in [k for k in self._store if k[0] == index]:
            del self._store[key], self._bytes[key]

    # ------------------------------------------------------------------ passes
    @contextlib.contextmanager
    def record(self, batch: int, batches: int) -> Iterator[None]:
        """Record the candidates' outputs of the unchanged forward of batch ``batch`` (of ``batches`` to be
        recorded) made in the block. After the first recorded batch, only the candidates whose outputs fit
        ``limit_bytes / batches`` per batch are kept (shallow ones first, then the smaller); the rest are dropped."""
        if not self.enabled:
            yield
            return
        self._begin('record', batch)
        try:
            yield
        finally:
            self._mode = None
        if self._kept is None:
            self._keep_within(self.limit_bytes // max(int(batches), 1))

    def _keep_within(self, budget: int) -> None:
        per: Dict[int, int] = {}
        for k, n in self._bytes.items():
            per[k[0]] = per.get(k[0], 0) + n
        order = sorted(per, key=lambda i: (self._depth[i], per[i], i))
        kept, total = set(), 0
        for i in order:
            if total + per[i] <= budget:
                kept.add(i)
                total += per[i]
        self._kept = kept
        for key in [k for k in self._store if k[0] not in kept]:
            del self._store[key], self._bytes[key]

    @contextlib.contextmanager
    def replay(self, batch: int, changed: Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()
               ) -> Iterator[None]:
        """For the block (one forward of batch ``batch`` under a trial's masks): answer the candidates that the
        trial cannot change from the records. ``changed``: the modules whose computation the trial changes
        (``ChannelMasks.changed_modules``); ``tensors``: the tensors it changed (their other owners count as
        changed too: tied weights)."""
        if not self.enabled:
            yield
            return
        movers: Dict[int, nn.Module] = {id(m): m for m in changed}
        for t in tensors:
            for m in self._owners.get(id(t), ()):
                movers[id(m)] = m
        self._dirty = set()
        for m in movers.values():
            self._dirty.update(self._ancestors.get(id(m), ()))
        handles = [m.register_forward_pre_hook(self._diverge) for m in movers.values()]
        self._begin('replay', batch)
        try:
            yield
        finally:
            self._mode = None
            for h in handles:
                h.remove()

    def _diverge(self, module: nn.Module, args: tuple) -> None:
        self._diverged = True

    def _begin(self, mode: str, batch: int) -> None:
        self._mode, self._batch = mode, int(batch)
        self._calls[:] = 0
        self._diverged = False
