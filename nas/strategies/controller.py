"""MnasNet's architecture controller: an LSTM policy over a Space's decisions.

Tan et al. 2019 ("MnasNet: Platform-Aware Neural Architecture Search for Mobile", CVPR) sample an
architecture as a sequence of tokens from a recurrent controller, one softmax per decision. Here
the decisions are the Space's (``Space.decisions()``, canonical order) and a token is a choice
index (``Space.encode``/``decode``). Each step feeds the embedding of the previous token into a
Flax LSTM cell; a per-decision output layer gives that decision's logits (choices beyond the
decision's cardinality are masked out).

Everything is a pure function of an explicit parameter pytree, so sampling and the policy
gradient are jitted with ``jax.lax.scan`` over the decisions (one compile per space).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_MASKED = -1e9


class Controller:
    """The LSTM policy for one list of decision cardinalities.

    Args:
        cardinalities: number of choices of each decision (``Space.cardinalities()``).
        hidden: LSTM width (MnasNet/NASNet controllers use ~100).
        logit_scale: initial scale of the output layer (small = near-uniform start).
        tanh_constant: logits are squashed to C * tanh(logits / C) (NASNet's controller uses
            2.5), so no choice's probability ever reaches 0 and the search keeps exploring;
            None leaves logits unbounded.

    Example:
        >>> c = Controller((2, 3))
        >>> params = c.init(jax.random.PRNGKey(0))
        >>> tokens = c.sample(params, jax.random.PRNGKey(1), 4)   # [4, 2] int32
    """

    def __init__(self, cardinalities: Sequence[int], hidden: int = 64, logit_scale: float = 0.01,
                 tanh_constant: float | None = 2.5):
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.hidden = int(hidden)
        self.logit_scale = float(logit_scale)
        self.tanh_constant = tanh_constant
        self.steps = len(self.cardinalities)
        self.width = max(self.cardinalities) if self.cardinalities else 1
        self.cell = nn.OptimizedLSTMCell(features=self.hidden)
        self.mask = jnp.asarray(np.arange(self.width)[None, :] < np.asarray(self.cardinalities)[:, None])

    def init(self, key: jax.Array) -> dict[str, Any]:
        """Returns fresh controller parameters.

        Args:
            key: a JAX PRNG key.

        Returns:
            {'cell': LSTM params, 'start': first input [H], 'embed': [T, K, H] token embeddings,
            'w': [T, H, K] and 'b': [T, K] per-decision output layers}.
        """
        k_cell, k_emb, k_w = jax.random.split(key, 3)
        carry = self.cell.initialize_carry(k_cell, (self.hidden,))
        cell = self.cell.init(k_cell, carry, jnp.zeros((self.hidden,)))["params"]
        return {
            "cell": cell,
            "start": jnp.zeros((self.hidden,)),
            "embed": 0.1 * jax.random.normal(k_emb, (self.steps, self.width, self.hidden)),
            "w": self.logit_scale * jax.random.normal(k_w, (self.steps, self.hidden, self.width)),
            "b": jnp.zeros((self.steps, self.width)),
        }

    def _run(self, params, key, tokens):
        """Runs the LSTM over the decisions; samples tokens when ``tokens`` is None.

        Returns:
            (tokens [T] int32, logits [T, K] with invalid choices masked).
        """
        zeros = jnp.zeros((self.hidden,))
        keys = jax.random.split(key, self.steps)
        given = tokens if tokens is not None else jnp.zeros((self.steps,), jnp.int32)

        def step(state, xs):
            carry, x = state
            w, b, emb, mask, k, tok = xs
            carry, h = self.cell.apply({"params": params["cell"]}, carry, x)
            logits = h @ w + b
            if self.tanh_constant:
                logits = self.tanh_constant * jnp.tanh(logits / self.tanh_constant)
            logits = jnp.where(mask, logits, _MASKED)
            if tokens is None:
                tok = jax.random.categorical(k, logits).astype(jnp.int32)
            return (carry, emb[tok]), (tok, logits)

        _, (toks, logits) = jax.lax.scan(
            step, ((zeros, zeros), params["start"]),
            (params["w"], params["b"], params["embed"], self.mask, keys, given))
        return toks, logits

    def sample(self, params, key: jax.Array, n: int) -> jax.Array:
        """Samples ``n`` token sequences (one choice index per decision).

        Args:
            params: controller parameters.
            key: a JAX PRNG key.
            n: how many sequences (a static size).

        Returns:
            int32 array [n, T].
        """
        return jax.vmap(lambda k: self._run(params, k, None)[0])(jax.random.split(key, n))

    def log_prob_and_entropy(self, params, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns log pi(tokens) and the policy's entropy along each sequence.

        Args:
            params: controller parameters.
            tokens: int32 [n, T] token sequences.

        Returns:
            (log-probabilities [n], entropies [n]), each summed over the decisions.
        """

        def one(toks):
            _, logits = self._run(params, jax.random.PRNGKey(0), toks)
            logp = jax.nn.log_softmax(logits)
            chosen = jnp.take_along_axis(logp, toks[:, None], axis=1)[:, 0]
            probs = jnp.where(self.mask, jnp.exp(logp), 0.0)
            entropy = -jnp.sum(probs * jnp.where(self.mask, logp, 0.0))
            return jnp.sum(chosen), entropy

        return jax.vmap(one)(tokens)
