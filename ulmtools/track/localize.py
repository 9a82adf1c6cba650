"""Sub-pixel localization of detected bubbles, 2D and 3D, in numba.

Every method looks at a small window around a detected maximum and returns the
bubble's position as a fractional pixel index. The kernels work on a movie laid
out ``(t, z, x, y)``; 2D movies pass a singleton ``y`` axis with a zero
half-window, so one compiled kernel serves both dimensions.

Methods (``METHODS``):

``none``
    the maximum's pixel (pixel precision; what the grid alone gives);
``centroid``
    intensity-weighted centroid of the window, its minimum subtracted;
``gaussian``
    a separable Gaussian fitted by weighted least squares to the logarithm of the
    envelope (weights I^2, which undo the log's noise amplification); falls back to
    the centroid where the window is not concave;
``radial-symmetry``
    Parthasarathy's radial-symmetry centre (Nat. Methods 2012), in any dimension:
    the point closest, in weighted least squares, to every line through a cell
    centre along the local intensity gradient. The PSF of an imaging system is not
    round (an ultrasound PSF is several times wider laterally than axially), so
    the method works in coordinates scaled by the PSF's width along each axis,
    where it is;
``spline``
    interpolation: the maximum of the Catmull-Rom cubic-spline interpolant of the
    envelope within half a pixel of the detected maximum, found on lattices refined
    to 1/256 pixel.

Each kernel returns positions clipped to half a window around the detected
pixel, so a failed fit can never move a localization to another bubble.
"""

from __future__ import annotations

import numba
import numpy as np

METHODS = ("none", "centroid", "gaussian", "radial-symmetry", "spline")
SPLINE_ROUNDS = 4


@numba.njit(cache=True, nogil=True)
def _bounds(c: int, h: int, n: int) -> tuple[int, int]:
    return max(c - h, 0), min(c + h, n - 1)


@numba.njit(cache=True, nogil=True)
def _centroid(env, t, cz, cx, cy, hz, hx, hy, out):
    _, nz, nx, ny = env.shape
    z0, z1 = _bounds(cz, hz, nz)
    x0, x1 = _bounds(cx, hx, nx)
    y0, y1 = _bounds(cy, hy, ny)
    lo = np.inf
    for z in range(z0, z1 + 1):
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                lo = min(lo, env[t, z, x, y])
    s = sz = sx = sy = 0.0
    for z in range(z0, z1 + 1):
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                w = env[t, z, x, y] - lo
                s += w
                sz += w * z
                sx += w * x
                sy += w * y
    if s <= 0.0:
        out[0], out[1], out[2] = cz, cx, cy
    else:
        out[0], out[1], out[2] = sz / s, sx / s, sy / s


@numba.njit(cache=True, nogil=True)
def _solve(a, b):
    """Gaussian elimination with partial pivoting; returns (x, ok)."""
    n = b.shape[0]
    m = a.copy()
    v = b.copy()
    scale = 0.0
    for i in range(n):
        scale = max(scale, abs(m[i, i]))
    if scale == 0.0:
        return v, False
    for k in range(n):
        p = k
        for i in range(k + 1, n):
            if abs(m[i, k]) > abs(m[p, k]):
                p = i
        if abs(m[p, k]) <= 1e-12 * scale:
            return v, False
        if p != k:
            for j in range(n):
                m[k, j], m[p, j] = m[p, j], m[k, j]
            v[k], v[p] = v[p], v[k]
        for i in range(k + 1, n):
            f = m[i, k] / m[k, k]
            for j in range(k, n):
                m[i, j] -= f * m[k, j]
            v[i] -= f * v[k]
    x = np.zeros(n)
    for i in range(n - 1, -1, -1):
        s = v[i]
        for j in range(i + 1, n):
            s -= m[i, j] * x[j]
        x[i] = s / m[i, i]
    return x, True


@numba.njit(cache=True, nogil=True)
def _gaussian(env, t, cz, cx, cy, hz, hx, hy, out):
    """log I = c + sum_i (b_i u_i + a_i u_i^2), u = offset from the maximum."""
    _, nz, nx, ny = env.shape
    z0, z1 = _bounds(cz, hz, nz)
    x0, x1 = _bounds(cx, hx, nx)
    y0, y1 = _bounds(cy, hy, ny)
    active = np.array([z1 > z0, x1 > x0, y1 > y0])
    nd = 0
    for i in range(3):
        if active[i]:
            nd += 1
    n = 1 + 2 * nd
    ata = np.zeros((n, n))
    atb = np.zeros(n)
    row = np.zeros(n)
    peak = env[t, cz, cx, cy]
    if peak <= 0.0:
        _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
        return
    floor = peak * 1e-6
    for z in range(z0, z1 + 1):
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                val = env[t, z, x, y]
                if val <= floor:
                    continue
                w = (val / peak) ** 2
                row[0] = 1.0
                k = 1
                u = (z - cz, x - cx, y - cy)
                for i in range(3):
                    if active[i]:
                        row[k] = u[i]
                        row[k + 1] = u[i] * u[i]
                        k += 2
                lv = np.log(val / peak)
                for p in range(n):
                    atb[p] += w * row[p] * lv
                    for q in range(n):
                        ata[p, q] += w * row[p] * row[q]
    coef, ok = _solve(ata, atb)
    centre = (cz, cx, cy)
    half = (hz, hx, hy)
    k = 1
    for i in range(3):
        if not active[i]:
            out[i] = centre[i]
            continue
        b, a = coef[k], coef[k + 1]
        k += 2
        if not ok or a >= 0.0:
            _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
            return
        shift = -b / (2.0 * a)
        out[i] = centre[i] + min(max(shift, -half[i] - 0.5), half[i] + 0.5)


@numba.njit(cache=True, nogil=True)
def _radial(env, t, cz, cx, cy, hz, hx, hy, scale, out):
    """Parthasarathy's radial-symmetry centre in scaled coordinates, 1 to 3 axes."""
    _, nz, nx, ny = env.shape
    z0, z1 = _bounds(cz, hz, nz)
    x0, x1 = _bounds(cx, hx, nx)
    y0, y1 = _bounds(cy, hy, ny)
    lo = (z0, x0, y0)
    hi = (z1, x1, y1)
    active = np.array([z1 > z0, x1 > x0, y1 > y0])
    # cells: 2^nd pixel corners; along an inactive axis the cell is the single pixel
    cz1 = z1 if active[0] else z1 + 1
    cx1 = x1 if active[1] else x1 + 1
    cy1 = y1 if active[2] else y1 + 1
    ncell = max(cz1 - z0, 0) * max(cx1 - x0, 0) * max(cy1 - y0, 0)
    if ncell == 0:
        _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
        return
    pts = np.zeros((ncell, 3))
    grads = np.zeros((ncell, 3))
    mags = np.zeros(ncell)
    k = 0
    for z in range(z0, cz1):
        for x in range(x0, cx1):
            for y in range(y0, cy1):
                corner = (z, x, y)
                g = np.zeros(3)
                for i in range(3):
                    if not active[i]:
                        continue
                    # mean forward difference along axis i over the cell's edges
                    s = 0.0
                    m = 0
                    for dz in range(2 if active[0] else 1):
                        for dx in range(2 if active[1] else 1):
                            for dy in range(2 if active[2] else 1):
                                d = (dz, dx, dy)
                                if d[i] != 0:
                                    continue
                                a = env[t, z + dz, x + dx, y + dy]
                                if i == 0:
                                    b = env[t, z + 1, x + dx, y + dy]
                                elif i == 1:
                                    b = env[t, z + dz, x + 1, y + dy]
                                else:
                                    b = env[t, z + dz, x + dx, y + 1]
                                s += b - a
                                m += 1
                    g[i] = s / m * scale[i]  # d/du' = scale * d/du, with u' = u / scale
                for i in range(3):
                    pts[k, i] = (corner[i] + (0.5 if active[i] else 0.0)) / scale[i]
                    grads[k, i] = g[i]
                mags[k] = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
                k += 1
    total = mags.sum()
    if total <= 0.0:
        _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
        return
    cen = np.zeros(3)
    for k in range(ncell):
        for i in range(3):
            cen[i] += mags[k] * pts[k, i]
    cen /= total
    mat = np.zeros((3, 3))
    rhs = np.zeros(3)
    for k in range(ncell):
        if mags[k] <= 0.0:
            continue
        dist = 0.0
        for i in range(3):
            dist += (pts[k, i] - cen[i]) ** 2
        w = mags[k] / max(np.sqrt(dist), 1e-6)
        nrm = np.sqrt(mags[k])
        for i in range(3):
            for j in range(3):
                proj = (1.0 if i == j else 0.0) - grads[k, i] * grads[k, j] / (nrm * nrm)
                mat[i, j] += w * proj
                rhs[i] += w * proj * pts[k, j]
    # inactive axes: pin the coordinate to the pixel
    centre = (cz, cx, cy)
    for i in range(3):
        if not active[i]:
            for j in range(3):
                mat[i, j] = 0.0
                mat[j, i] = 0.0
            mat[i, i] = 1.0
            rhs[i] = centre[i] / scale[i]
    p, ok = _solve(mat, rhs)
    if not ok:
        _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
        return
    for i in range(3):
        out[i] = min(max(p[i] * scale[i], lo[i] - 0.5), hi[i] + 0.5)


@numba.njit(cache=True, nogil=True)
def _keys(s):
    """Catmull-Rom (Keys a = -0.5) cubic convolution weight at distance s."""
    s = abs(s)
    if s < 1.0:
        return 1.5 * s**3 - 2.5 * s**2 + 1.0
    if s < 2.0:
        return -0.5 * s**3 + 2.5 * s**2 - 4.0 * s + 2.0
    return 0.0


@numba.njit(cache=True, nogil=True)
def _taps(f, n, active, idx, wts):
    """The 4 Catmull-Rom taps (clamped indices, weights) at position f; 1 if inactive."""
    if not active:
        idx[0] = int(f)
        wts[0] = 1.0
        return 1
    base = int(np.floor(f))
    for j in range(4):
        p = base - 1 + j
        idx[j] = min(max(p, 0), n - 1)
        wts[j] = _keys(f - p)
    return 4


@numba.njit(cache=True, nogil=True)
def _interp(env, t, f, size, iz, ix, iy, wz, wx, wy):
    nzt = _taps(f[0], size[0], size[0] > 1, iz, wz)
    nxt = _taps(f[1], size[1], size[1] > 1, ix, wx)
    nyt = _taps(f[2], size[2], size[2] > 1, iy, wy)
    val = 0.0
    for p in range(nzt):
        for q in range(nxt):
            for r in range(nyt):
                val += wz[p] * wx[q] * wy[r] * env[t, iz[p], ix[q], iy[r]]
    return val


@numba.njit(cache=True, nogil=True)
def _spline(env, t, cz, cx, cy, out):
    """Maximum of the Catmull-Rom interpolant within half a pixel, by lattice refinement.

    A 5-point lattice per axis, 1/4 pixel apart, is searched around the maximum;
    the lattice is then shrunk 4 times around its best point, SPLINE_ROUNDS times,
    which reaches 1/4^SPLINE_ROUNDS of a pixel for a fraction of a full lattice's cost.
    """
    _, nz, nx, ny = env.shape
    size = (nz, nx, ny)
    iz, ix, iy = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
    wz, wx, wy = np.zeros(4), np.zeros(4), np.zeros(4)
    best = np.array([float(cz), float(cx), float(cy)])
    f = best.copy()
    step = 0.25
    rz, rx, ry = (2 if nz > 1 else 0), (2 if nx > 1 else 0), (2 if ny > 1 else 0)
    for _ in range(SPLINE_ROUNDS):
        centre = best.copy()
        top = -np.inf
        for a in range(-rz, rz + 1):
            f[0] = min(max(centre[0] + a * step, cz - 0.5), cz + 0.5)
            for b in range(-rx, rx + 1):
                f[1] = min(max(centre[1] + b * step, cx - 0.5), cx + 0.5)
                for c in range(-ry, ry + 1):
                    f[2] = min(max(centre[2] + c * step, cy - 0.5), cy + 0.5)
                    val = _interp(env, t, f, size, iz, ix, iy, wz, wx, wy)
                    if val > top:
                        top = val
                        best[0], best[1], best[2] = f[0], f[1], f[2]
        step /= 4.0
    out[0], out[1], out[2] = best[0], best[1], best[2]


@numba.njit(cache=True, nogil=True)
def _localize(env, det, method, half, scale):
    n = det.shape[0]
    res = np.empty((n, 3))
    out = np.empty(3)
    hz, hx, hy = half[0], half[1], half[2]
    for k in range(n):
        t, cz, cx, cy = det[k, 0], det[k, 1], det[k, 2], det[k, 3]
        if method == 0:
            out[0], out[1], out[2] = cz, cx, cy
        elif method == 1:
            _centroid(env, t, cz, cx, cy, hz, hx, hy, out)
        elif method == 2:
            _gaussian(env, t, cz, cx, cy, hz, hx, hy, out)
        elif method == 3:
            _radial(env, t, cz, cx, cy, hz, hx, hy, scale, out)
        else:
            _spline(env, t, cz, cx, cy, out)
        res[k, 0], res[k, 1], res[k, 2] = out[0], out[1], out[2]
    return res


def localize(
    envelope: np.ndarray,
    detections: np.ndarray,
    method: str = "gaussian",
    *,
    window: tuple[int, ...] | None = None,
    psf_width: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Fractional pixel positions (n, S) of ``detections`` in a movie's envelope.

    ``envelope`` is (t, *space) with 2 or 3 spatial axes; ``detections`` is
    (n, 1 + S) integer ``(t, *index)`` of local maxima. ``window`` is the odd
    window size per spatial axis (default 3 each); ``psf_width`` the PSF's width
    per axis in pixels, used by ``radial-symmetry`` to make the PSF round (default
    the window size).
    """
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; known: {', '.join(METHODS)}")
    env = np.asarray(envelope)
    if env.dtype not in (np.float32, np.float64):
        env = env.astype(np.float64)
    s = env.ndim - 1
    if s not in (2, 3):
        raise ValueError(f"envelope must be (t, z, x) or (t, z, x, y), got shape {env.shape}")
    det = np.asarray(detections, dtype=np.int64).reshape(-1, 1 + s)
    window = tuple(window) if window is not None else (3,) * s
    if len(window) != s or any(w < 1 or w % 2 == 0 for w in window):
        raise ValueError(f"window must be {s} odd sizes, got {window}")
    width = tuple(psf_width) if psf_width is not None else tuple(float(w) for w in window)
    if s == 2:
        env = env[..., None]
        det = np.concatenate([det, np.zeros((len(det), 1), np.int64)], axis=1)
        window = (*window, 1)
        width = (*width, 1.0)
    half = np.asarray([w // 2 for w in window], dtype=np.int64)
    scale = np.asarray([max(float(w), 1e-3) for w in width], dtype=np.float64)
    if len(det) == 0:
        return np.zeros((0, s))
    pos = _localize(env, det, METHODS.index(method), half, scale)
    return pos[:, :s]
