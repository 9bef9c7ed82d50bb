"""Low-rank 1x1 convs: SVD initialization from a trained full conv."""

import jax
import jax.numpy as jnp
import numpy as np

from nas.model import init_variables
from nas.blocks.convs import PointwiseConv
from nas.blocks.factorized import factorize_pointwise_params, svd_factorize, svd_tail_error


def _full_conv(cin=12, cout=8, bias=True):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, cin))
    full = PointwiseConv(cout, use_bias=bias)
    params = init_variables(full, jax.random.key(1), x.shape)["params"]
    params = dict(params, bias=jax.random.normal(jax.random.key(2), (cout,)))
    return x, full, params


def test_full_rank_svd_factorization_reproduces_the_full_conv():
    x, full, params = _full_conv()
    factorized = PointwiseConv(8, use_bias=True, rank=8)
    fparams = factorize_pointwise_params(params, rank=8)
    assert fparams["kernel_u"].shape == (1, 1, 12, 8) and fparams["kernel_v"].shape == (1, 1, 8, 8)
    np.testing.assert_allclose(factorized.apply({"params": fparams}, x),
                               full.apply({"params": params}, x), rtol=1e-4, atol=1e-4)


def test_rank_r_error_equals_the_svd_tail():
    _, full, params = _full_conv(bias=False)
    kernel = np.asarray(params["kernel"])[0, 0]
    s = np.linalg.svd(kernel, compute_uv=False)
    eye = jnp.eye(12)  # the conv applied to the unit vectors is the kernel matrix itself
    for r in (1, 3, 6):
        factorized = PointwiseConv(8, rank=r)
        approx = factorized.apply({"params": factorize_pointwise_params(params, r)}, eye)
        err = np.linalg.norm(np.asarray(approx) - kernel)
        assert np.isclose(err, np.sqrt(np.sum(s[r:] ** 2)), rtol=1e-4)
        assert np.isclose(err, svd_tail_error(params["kernel"], r), rtol=1e-4)
        assert factorized.apply({"params": factorize_pointwise_params(params, r)}, eye).shape == (12, 8)
    u, v = svd_factorize(params["kernel"], 3)
    assert np.linalg.matrix_rank(np.asarray(u[0, 0] @ v[0, 0])) == 3


def test_factorized_param_count_is_r_times_cin_plus_cout():
    x = jnp.zeros((1, 4, 4, 24))
    params = init_variables(PointwiseConv(40, rank=6), jax.random.key(0), x.shape)["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == 6 * (24 + 40)
