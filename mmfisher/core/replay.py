"""Replay of the activations a trial cannot change: one-shot trials skip the unchanged prefix of the network.

A trial (:meth:`~mmfisher.core.masks.ChannelMasks.trial`) changes the computation of a few modules only: the
readers whose input weights it zeroes and the renormalizing norms it gives masked channels (its
``changed_modules``). In the forward of a calibration batch, every module call made before the first changed
module starts is the very call of the unchanged forward: the same inputs, the same weights, the same random
draws (the measurements seed torch's RNG per batch). So a module whose subtree holds no changed module, called
before that point, returns what it returned in the unchanged forward. For a unit deep in the network (a
detector's head, a backbone's last stage) the whole prefix before it costs nothing.

:class:`ActivationReplay` wraps every module's ``forward`` (containers and leaves: a ResNet's stem convolution and
max pool are leaves of the backbone) and, in each trial forward (:meth:`replay`), answers such a call from a
record of that call (module, batch, call number), made the first time the call was seen unchanged, in this trial
or an earlier one: no extra pass. It is exact by construction (the replayed values are bit-identical to a
recomputation on a deterministic device). ``benchmarks/balanced_models.py`` checks it on 38 zoo,
torchvision and timm models (every curve point replayed and recomputed). A module is never replayed when:

* its subtree holds a changed module, or a changed module (or an owner of a tensor the trial changed: tied
  weights) has started in this forward (its forward pre-hook marks the forward "diverged"), or ran inside its
  recorded call without being its descendant (a module passed in as an argument: DINO's decoder calls the
  head's ``reg_branches``; a call during which the forward diverged is never recorded). A changed module
  whose own ``forward`` is not seen called (its weights read by its parent: ``nn.MultiheadAttention`` passes
  ``out_proj.weight`` to ``F.multi_head_attention_forward``) diverges the forward when its nearest ancestor
  seen called starts; until a forward has shown which modules are called, when any of its ancestors starts;
* some module strictly inside it has hooks at the time of the call (a feature recorder, e.g. a distiller's
  anchors, must see its call, also one registered for a single forward only; the module's own hooks run around
  the replayed forward as usual); the global module hooks are set (then nothing is replayed);
* its recorded call drew from torch's RNG (its skipped draws would shift the later ones), changed a tensor
  argument in place other than by returning its first argument (an in-place activation's write is replayed into
  that argument), returned a view of an argument (an identity, a flatten: a copy would not follow later writes),
  or returned something other than tensors in (nested) tuples, lists and dicts (with None, numbers and
  strings);
* its output does not fit the memory ``limit_bytes`` any more (first recorded, first kept).

Invariant methods (``invariant``: ``(module, method name)`` pairs whose results depend on their arguments only,
and those on the batch only, never on a weight: a detector head's anchors and target assignment) are recorded
and answered the same way, also after the forward diverged (the caller vouches for the invariance; the RNG,
in-place and copy conditions above still apply).

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
    if type(value) in (tuple, list):
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


def _arg_tensors(args: tuple, kwargs: dict) -> List[torch.Tensor]:
    """The tensors among the arguments and one level of tuples / lists / dicts in them."""
    out = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
        elif isinstance(a, dict):
            out.extend(t for t in a.values() if isinstance(t, torch.Tensor))
    return out


def _aliases(out: Any, tensors: List[torch.Tensor]) -> bool:
    """Whether a tensor of ``out`` (or of one level of tuples / lists / dicts in it) shares storage with one of
    ``tensors`` (an identity or a view: a copy would not follow later writes into it)."""
    if not tensors:
        return False
    outs = _arg_tensors((out,), {})
    if not outs:
        return False
    ptrs = {t.untyped_storage().data_ptr() for t in tensors}
    return any(o.untyped_storage().data_ptr() in ptrs for o in outs)


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
    """Answers the module calls a trial cannot change from records of their unchanged calls (module docstring).

    Args:
        model: the module whose forwards are replayed (its strict descendants with a ``forward`` are the
            candidates).
        limit_bytes: the memory the records may take, over all batches. 0 turns replay off.
        invariant: ``(module, method name)`` pairs whose results depend on the batch only.

    Use::

        replay = ActivationReplay(model, 2 ** 30)
        with replay.installed():
            for alive in candidates:
                with masks.trial(alive):
                    for i, batch in enumerate(batches):
                        with replay.replay(i, masks.changed_modules, masks.changed_tensors):
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
        self.candidates: List[Tuple[str, nn.Module]] = [
            (name, module) for name, module in model.named_modules()  # each module once, at its first place
            if module is not model and type(module).forward is not nn.Module.forward]
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
        # invariant methods: indices after the modules
        self._methods: List[Tuple[nn.Module, str]] = []
        for module, method in invariant:
            if not any(m is module and n == method for m, n in self._methods):
                self._methods.append((module, method))
        self._first_method = len(self.candidates)
        names = {id(m): n for n, m in model.named_modules()}
        self._names = [n for n, _ in self.candidates] + [
            f'{names.get(id(m), type(m).__name__)}.{method}()' for m, method in self._methods]
        # the modules strictly inside each candidate: a call with hooks on one of them is computed, not recorded
        self._inner: List[List[nn.Module]] = [[d for d in m.modules() if d is not m] for _, m in self.candidates]
        self._hooked: Set[int] = set()  # candidates seen with hooks strictly inside at a call (for stats)
        # (module index, batch, call number) -> (output copy, descendants' calls inside, in place, bytes)
        self._store: Dict[Tuple[int, int, int], Tuple[Any, np.ndarray, bool, int]] = {}
        self._bytes = 0
        self._refused: Set[int] = set()  # drew RNG, wrote into an argument, or an output that cannot be copied
        self._full = False  # a record did not fit the limit
        self._active = False
        self._batch = -1
        self._calls = np.zeros(len(self._names), dtype=np.int64)
        # candidates seen called (computed or replayed, descendants of a replayed call included) in any forward
        self._called = np.zeros(len(self._names), dtype=bool)
        self._index = {id(m): i for i, (_, m) in enumerate(self.candidates)}
        self._dirty: Set[int] = set()
        self._triggers = np.zeros(0, dtype=np.int64)  # candidate indices whose start diverges this trial forward
        self._diverged = False
        self.replayed = 0  # calls answered from the records
        self.computed = 0  # candidate calls computed in trials
        self.enabled = limit_bytes > 0 and bool(self._names) and not _global_hooks()

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def stats(self) -> Dict[str, Any]:
        """What was recorded and replayed (for a results file)."""
        recorded = {k[0] for k in self._store}
        return {'candidates': len(self.candidates),
                'recorded': len({i for i in recorded if i < self._first_method}),
                'invariant_methods': self._names[self._first_method:],
                'invariant_recorded': len({i for i in recorded if i >= self._first_method}),
                'stored_mb': round(self._bytes / 2 ** 20, 3), 'limit_mb': round(self.limit_bytes / 2 ** 20, 3),
                'limit_reached': self._full, 'calls_replayed': self.replayed, 'calls_computed': self.computed,
                'refused': sorted(self._names[i] for i in self._refused),
                'hooked': sorted(self._names[i] for i in self._hooked)}

    # ------------------------------------------------------------------ patching
    @contextlib.contextmanager
    def installed(self) -> Iterator['ActivationReplay']:
        """Every candidate's ``forward`` and every invariant method wrapped for the block (an instance attribute
        already there, e.g. a patched norm's forward, is wrapped and restored after; a no-op while disabled).
        Outside :meth:`replay` the wrapped calls compute as usual."""
        if not self.enabled:
            yield self
            return
        patched = []
        try:
            targets = [(m, 'forward') for _, m in self.candidates] + self._methods
            for index, (m, attr) in enumerate(targets):
                previous = m.__dict__.get(attr, _MISSING)
                setattr(m, attr, self._wrap(index, getattr(m, attr)))
                patched.append((m, attr, previous))
            yield self
        finally:
            for m, attr, previous in reversed(patched):
                if previous is _MISSING:
                    delattr(m, attr)
                else:
                    setattr(m, attr, previous)
            self._active = False

    def _wrap(self, index: int, forward: Any) -> Any:
        invariant = index >= self._first_method

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not self._active:
                return forward(*args, **kwargs)
            calls = self._calls
            key = (index, self._batch, int(calls[index]))
            calls[index] += 1
            if not invariant and (self._diverged or index in self._dirty or self._hooks_inside(index)):
                self.computed += 1
                return forward(*args, **kwargs)
            entry = self._store.get(key)
            if entry is None:
                self.computed += 1
                return self._record(index, key, forward, args, kwargs)
            value, inner, in_place, _ = entry
            if self._triggers.size and inner[self._triggers].any():
                # a changed module ran inside the recorded call without being a descendant (a module passed in
                # as an argument: DINO's decoder calls the head's reg_branches): compute it
                self.computed += 1
                return forward(*args, **kwargs)
            calls += inner  # the calls it would have made (its descendants', and any other module's inside it)
            self.replayed += 1
            if in_place:  # the call wrote its output into its first argument: so does the replay
                return args[0].copy_(value)
            return _copy(value)[0]
        return wrapped

    def _hooks_inside(self, index: int) -> bool:
        """Whether a module strictly inside candidate ``index`` has hooks now (checked at every call: a hook
        may be registered for one forward only, e.g. a distiller's feature capture). The trial's own
        divergence pre-hooks sit on changed modules, whose ancestors are never replayed anyway."""
        if any(_has_hooks(d) for d in self._inner[index]):
            self._hooked.add(index)
            return True
        return False

    def _record(self, index: int, key: Tuple[int, int, int], forward: Any, args: tuple, kwargs: dict) -> Any:
        """Compute an unchanged call (or an invariant method's) and record it, if it may be replayed."""
        if index in self._refused or self._full:
            return forward(*args, **kwargs)
        rng = _rng_state()
        tensors = _arg_tensors(args, kwargs)
        versions = [t._version for t in tensors]
        before = self._calls.copy()
        out = forward(*args, **kwargs)
        if self._diverged and index < self._first_method:
            # a changed module ran inside this call (not a descendant): not an unchanged call (an invariant method's
            # result depends on its arguments only, however far the forward has diverged)
            return out
        written = [t for t, v in zip(tensors, versions) if t._version != v]
        after = _rng_state()
        in_place = bool(written) and len(written) == 1 and bool(args) and out is args[0] is written[0]
        if (written and not in_place) or (not in_place and _aliases(out, tensors)) or len(rng) != len(after) or \
                not all(torch.equal(a, b) for a, b in zip(rng, after)):
            self._refuse(index)
            return out
        value, size = _copy(out)
        if size < 0:
            self._refuse(index)
            return out
        if self._bytes + size > self.limit_bytes:
            self._full = True
            return out
        inner = self._calls - before
        inner[index] = 0
        self._store[key] = (value, inner, in_place, size)
        self._bytes += size
        return out

    def _refuse(self, index: int) -> None:
        self._refused.add(index)
        for key in [k for k in self._store if k[0] == index]:
            self._bytes -= self._store.pop(key)[3]

    # ------------------------------------------------------------------ a trial forward
    @contextlib.contextmanager
    def replay(self, batch: int, changed: Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()
               ) -> Iterator[None]:
        """For the block (one forward of batch ``batch`` under a trial's masks): answer the calls the trial cannot
        change from their records, and record those not recorded yet. ``changed``: the modules whose computation
        the trial changes (``ChannelMasks.changed_modules``); ``tensors``: the tensors it changed (their other
        owners count as changed too: tied weights). ``changed=()``: the unchanged forward itself."""
        if not self.enabled:
            yield
            return
        movers: Dict[int, nn.Module] = {id(m): m for m in changed}
        for t in tensors:
            for m in self._owners.get(id(t), ()):
                movers[id(m)] = m
        self._dirty = set()
        triggers: Dict[int, nn.Module] = {}
        for m in movers.values():
            self._dirty.update(self._ancestors.get(id(m), ()))
            triggers[id(m)] = m
            for i in self._uses_of(m):
                triggers[id(self.candidates[i][1])] = self.candidates[i][1]
        handles = [m.register_forward_pre_hook(self._diverge) for m in triggers.values()]
        self._triggers = np.array(sorted(self._index[k] for k in triggers if k in self._index), dtype=np.int64)
        self._active, self._batch = True, int(batch)
        self._calls[:] = 0
        self._diverged = False
        try:
            yield
        finally:
            self._active = False
            self._called |= self._calls > 0
            for h in handles:
                h.remove()

    def _uses_of(self, module: nn.Module) -> List[int]:
        """The candidates whose start may be where ``module``'s weights are first read, when its own forward is
        not seen called: each ancestor with no ancestor seen called between it and ``module`` (all of them
        before any forward was seen). [] when ``module``'s forward is seen called."""
        own = self._index.get(id(module))
        if own is not None and self._called[own]:
            return []
        above = [i for i in self._ancestors.get(id(module), ()) if i != own]
        called = [i for i in above if self._called[i]]
        inside = self._ancestors  # id(module) -> the candidates holding it

        def between(i: int) -> bool:  # a called ancestor of ``module`` strictly inside candidate i
            return any(j != i and i in inside[id(self.candidates[j][1])] for j in called)
        return [i for i in above if not between(i)]

    def _diverge(self, module: nn.Module, args: tuple) -> None:
        self._diverged = True
