/*
 * Reduction-shaped kernels of the CUDA backend: block reductions, Softmax and
 * LogSoftmax, LayerNorm/InstanceNorm rows and BatchNorm, Reduce* and
 * ArgMax/ArgMin, pooling, im2col, and the bias/residual/activation epilogue
 * of GEMMs and convolutions. See backend_cuda_kern.h for the contract of each
 * launcher; elementwise and data-movement kernels are in backend_cuda_kern.cu.
 *
 * The results follow the engine's reference kernels (engine_k_reduce.c,
 * engine_k_nn.c): the same NaN handling in reductions, the same activation
 * formulas (engine_scalar.h).
 */
#include "backend_cuda_kern.cuh"

/* ---- block reductions ---- */

/* Sum (is_max = 0) or max of v over the block; every thread gets the result. */
__device__ float block_reduce_f(float v, int is_max, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_down_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, t) : v + t;
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float t = __shfl_down_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, t) : v + t;
        }
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Combines two partial results of a Reduce* op. */
__device__ double red_combine(int op, double a, double b)
{
    switch (op) {
    case EOP_REDUCEMAX: return isnan(a) || isnan(b) ? NAN : (a > b ? a : b);
    case EOP_REDUCEMIN: return isnan(a) || isnan(b) ? NAN : (a < b ? a : b);
    case EOP_REDUCEPROD: return a * b;
    default: return a + b;
    }
}

__device__ double red_identity(int op)
{
    switch (op) {
    case EOP_REDUCEMAX: return -INFINITY;
    case EOP_REDUCEMIN: return INFINITY;
    case EOP_REDUCEPROD: return 1.0;
    default: return 0.0;
    }
}

__device__ double block_reduce_d(int op, double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v = red_combine(op, v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : red_identity(op);
        for (int o = 16; o > 0; o >>= 1)
            v = red_combine(op, v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    double r = sh[0];
    __syncthreads();
    return r;
}

/* ---- softmax ---- */

__global__ void k_softmax_rows(const float *x, float *y, int64_t rows, int64_t len, int log_sm)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * len;
        float *yr = y + r * len;
        float mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            mx = fmaxf(mx, xr[j]);
        mx = block_reduce_f(mx, 1, sh);
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            sum += expf(xr[j] - mx);
        sum = block_reduce_f(sum, 0, sh);
        if (log_sm) {
            float ls = logf(sum);
            for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
                yr[j] = xr[j] - mx - ls;
        } else {
            float inv = 1.0f / sum;
            for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
                yr[j] = expf(xr[j] - mx) * inv;
        }
    }
}

__global__ void k_softmax_cols(const float *x, float *y, int64_t outer, int64_t len,
                               int64_t inner, int log_sm)
{
    GRID_LOOP(i, outer * inner)
    {
        int64_t o = i / inner, in = i - o * inner;
        const float *xr = x + o * len * inner + in;
        float *yr = y + o * len * inner + in;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < len; j++)
            mx = fmaxf(mx, xr[j * inner]);
        for (int64_t j = 0; j < len; j++)
            sum += expf(xr[j * inner] - mx);
        float ls = logf(sum), inv = 1.0f / sum;
        for (int64_t j = 0; j < len; j++)
            yr[j * inner] = log_sm ? xr[j * inner] - mx - ls : expf(xr[j * inner] - mx) * inv;
    }
}

extern "C" int ck_softmax(const float *x, float *y, int64_t outer, int64_t len, int64_t inner,
                          int log_sm, void *stream)
{
    if (outer <= 0 || len <= 0 || inner <= 0)
        return 0;
    cudaStream_t s = (cudaStream_t)stream;
    if (inner == 1)
        k_softmax_rows<<<rows_grid(outer), CK_BLOCK, 0, s>>>(x, y, outer, len, log_sm);
    else
        k_softmax_cols<<<grid_for(outer * inner), CK_BLOCK, 0, s>>>(x, y, outer, len, inner,
                                                                    log_sm);
    return launched();
}

/* ---- normalisation ---- */

__global__ void k_rownorm(const float *x, float *y, int64_t rows, int64_t len, float eps,
                          const float *scale, int64_t sn, const float *bias, int64_t bn,
                          int64_t channels, float *mean_out, float *inv_out)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * len;
        float *yr = y + r * len;
        float s = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            s += xr[j];
        s = block_reduce_f(s, 0, sh);
        float mean = len ? s / (float)len : 0.0f;
        float s2 = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
            float d = xr[j] - mean;
            s2 += d * d;
        }
        s2 = block_reduce_f(s2, 0, sh);
        float inv = 1.0f / sqrtf((len ? s2 / (float)len : 0.0f) + eps);
        int64_t c = channels > 0 ? r % channels : 0;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
            float sc, bi = 0.0f;
            if (channels > 0) {
                sc = scale[c];
                bi = bias ? bias[c] : 0.0f;
            } else {
                sc = scale[sn == 1 ? 0 : j];
                bi = bias ? bias[bn == 1 ? 0 : j] : 0.0f;
            }
            yr[j] = (xr[j] - mean) * inv * sc + bi;
        }
        if (threadIdx.x == 0) {
            if (mean_out)
                mean_out[r] = mean;
            if (inv_out)
                inv_out[r] = inv;
        }
    }
}

extern "C" int ck_rownorm(const float *x, float *y, int64_t rows, int64_t len, float eps,
                          const float *scale, int64_t sn, const float *bias, int64_t bn,
                          int64_t channels, float *mean, float *invstd, void *stream)
{
    if (rows <= 0)
        return 0;
    k_rownorm<<<rows_grid(rows), CK_BLOCK, 0, (cudaStream_t)stream>>>(
        x, y, rows, len, eps, scale, sn, bias, bn, channels, mean, invstd);
    return launched();
}

__global__ void k_batchnorm(const float *x, float *y, const float *sc, const float *bi,
                            const float *mu, const float *var, float eps, int64_t n, int64_t c,
                            int64_t sp)
{
    GRID_LOOP(i, n * c * sp)
    {
        int64_t ch = (i / sp) % c;
        float k = sc[ch] / sqrtf(var[ch] + eps);
        float off = bi[ch] - mu[ch] * k;
        y[i] = x[i] * k + off;
    }
}

extern "C" int ck_batchnorm(const float *x, float *y, const float *scale, const float *bias,
                            const float *mean, const float *var, float eps, int64_t n, int64_t c,
                            int64_t sp, void *stream)
{
    int64_t total = n * c * sp;
    if (total <= 0)
        return 0;
    k_batchnorm<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, y, scale, bias, mean,
                                                                        var, eps, n, c, sp);
    return launched();
}

/* ---- Reduce*, ArgMax/ArgMin ---- */

__device__ int64_t red_offset(const int64_t *dims, const int64_t *str, int n, int64_t t)
{
    int64_t off = 0;
    for (int d = n - 1; d >= 0; d--) {
        int64_t q = t / dims[d];
        off += (t - q * dims[d]) * str[d];
        t = q;
    }
    return off;
}

__device__ double red_term(int op, double v, double mx)
{
    switch (op) {
    case EOP_REDUCESUMSQUARE:
    case EOP_REDUCEL2: return v * v;
    case EOP_REDUCEL1: return fabs(v);
    case EOP_REDUCELOGSUMEXP: return exp(v - mx);
    default: return v;
    }
}

/* One block per output element; the reduction runs in double as the reference kernel does. */
__global__ void k_reduce(int op, int dt, const void *x, void *y, ck_rdesc r)
{
    __shared__ double sh[32];
    for (int64_t o = blockIdx.x; o < r.nout; o += gridDim.x) {
        int64_t base = red_offset(r.kdims, r.kstr, r.nk, o);
        double mx = 0.0;
        if (op == EOP_REDUCELOGSUMEXP) {
            double m = -INFINITY;
            for (int64_t t = threadIdx.x; t < r.rcount; t += blockDim.x) {
                double v = ld_d(x, dt, base + red_offset(r.rdims, r.rstr, r.nr, t));
                m = v > m ? v : m;
            }
            m = block_reduce_d(EOP_REDUCEMAX, m, sh);
            mx = isfinite(m) ? m : 0.0;
        }
        int cop = op == EOP_REDUCELOGSUMEXP ? EOP_REDUCESUM : op;
        double acc = red_identity(cop);
        for (int64_t t = threadIdx.x; t < r.rcount; t += blockDim.x) {
            double v = ld_d(x, dt, base + red_offset(r.rdims, r.rstr, r.nr, t));
            acc = red_combine(cop, acc, red_term(op, v, mx));
        }
        acc = block_reduce_d(cop, acc, sh);
        if (threadIdx.x == 0) {
            if (op == EOP_REDUCEMEAN)
                acc = r.rcount ? acc / (double)r.rcount : NAN;
            else if (op == EOP_REDUCEL2)
                acc = sqrt(acc);
            else if (op == EOP_REDUCELOGSUMEXP)
                acc = log(acc) + mx;
            if (dt == DT_FP32)
                ((float *)y)[o] = (float)acc;
            else
                st_int(y, dt, o, (int64_t)(dt != DT_FP32 && op == EOP_REDUCEMEAN ? trunc(acc)
                                                                                 : acc));
        }
    }
}

extern "C" int ck_reduce(int op, int dtype, const void *x, void *y, const struct ck_rdesc *r,
                         void *stream)
{
    if (r->nout <= 0)
        return 0;
    /* A warp suffices for short reductions; longer ones get a full block. */
    int threads = r->rcount <= 64 ? 32 : CK_BLOCK;
    k_reduce<<<rows_grid(r->nout), threads, 0, (cudaStream_t)stream>>>(op, dtype, x, y, *r);
    return launched();
}

__global__ void k_argext(const void *x, int dt, int64_t *y, int64_t outer, int64_t len,
                         int64_t inner, int is_min, int last)
{
    GRID_LOOP(i, outer * inner)
    {
        int64_t o = i / inner, k = i - o * inner, best = 0;
        double bv = ld_d(x, dt, o * len * inner + k);
        for (int64_t j = 1; j < len; j++) {
            double v = ld_d(x, dt, (o * len + j) * inner + k);
            int better = is_min ? v < bv : v > bv;
            if (better || (last && v == bv)) {
                bv = v;
                best = j;
            }
        }
        y[i] = best;
    }
}

extern "C" int ck_argext(const void *x, int dtype, int64_t *y, int64_t outer, int64_t len,
                         int64_t inner, int is_min, int select_last, void *stream)
{
    if (outer * inner <= 0 || len <= 0)
        return 0;
    k_argext<<<grid_for(outer * inner), CK_BLOCK, 0, (cudaStream_t)stream>>>(
        x, dtype, y, outer, len, inner, is_min, select_last);
    return launched();
}

/* ---- pooling and im2col ---- */

__global__ void k_pool(const float *x, float *y, int64_t nc, ck_window w, int is_max, int cip)
{
    int64_t osp = w.out[0] * w.out[1] * w.out[2], isp = w.in[0] * w.in[1] * w.in[2];
    GRID_LOOP(i, nc * osp)
    {
        int64_t ch = i / osp, r = i - ch * osp;
        int64_t o2 = r % w.out[2], o1 = (r / w.out[2]) % w.out[1], o0 = r / (w.out[2] * w.out[1]);
        int64_t st0 = o0 * w.s[0] - w.pb[0], st1 = o1 * w.s[1] - w.pb[1],
                st2 = o2 * w.s[2] - w.pb[2];
        const float *xc = x + ch * isp;
        float best = -INFINITY, sum = 0.0f;
        int64_t valid = 0, padded = 0;
        for (int64_t j0 = 0; j0 < w.k[0]; j0++) {
            int64_t p0 = st0 + j0 * w.d[0];
            if (p0 >= w.in[0] + w.pe[0])
                break;
            for (int64_t j1 = 0; j1 < w.k[1]; j1++) {
                int64_t p1 = st1 + j1 * w.d[1];
                if (p1 >= w.in[1] + w.pe[1])
                    break;
                for (int64_t j2 = 0; j2 < w.k[2]; j2++) {
                    int64_t p2 = st2 + j2 * w.d[2];
                    if (p2 >= w.in[2] + w.pe[2])
                        break;
                    padded++;
                    if (p0 < 0 || p0 >= w.in[0] || p1 < 0 || p1 >= w.in[1] || p2 < 0 ||
                        p2 >= w.in[2])
                        continue;
                    float v = xc[(p0 * w.in[1] + p1) * w.in[2] + p2];
                    valid++;
                    if (is_max)
                        best = v > best || isnan(v) ? v : best;
                    else
                        sum += v;
                }
            }
        }
        if (is_max)
            y[i] = best;
        else {
            int64_t div = cip ? padded : valid;
            y[i] = div ? sum / (float)div : 0.0f;
        }
    }
}

extern "C" int ck_pool(const float *x, float *y, int64_t nc, const struct ck_window *w,
                       int is_max, int count_include_pad, void *stream)
{
    int64_t total = nc * w->out[0] * w->out[1] * w->out[2];
    if (total <= 0)
        return 0;
    k_pool<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, y, nc, *w, is_max,
                                                                   count_include_pad);
    return launched();
}

__global__ void k_im2col(const float *x, float *col, int64_t c, ck_window w)
{
    int64_t ksz = w.k[0] * w.k[1] * w.k[2], osp = w.out[0] * w.out[1] * w.out[2];
    int64_t isp = w.in[0] * w.in[1] * w.in[2];
    GRID_LOOP(i, c * ksz * osp)
    {
        int64_t o = i % osp, row = i / osp, kk = row % ksz, ch = row / ksz;
        int64_t o2 = o % w.out[2], o1 = (o / w.out[2]) % w.out[1], o0 = o / (w.out[2] * w.out[1]);
        int64_t j2 = kk % w.k[2], j1 = (kk / w.k[2]) % w.k[1], j0 = kk / (w.k[2] * w.k[1]);
        int64_t p0 = o0 * w.s[0] - w.pb[0] + j0 * w.d[0];
        int64_t p1 = o1 * w.s[1] - w.pb[1] + j1 * w.d[1];
        int64_t p2 = o2 * w.s[2] - w.pb[2] + j2 * w.d[2];
        int ok = p0 >= 0 && p0 < w.in[0] && p1 >= 0 && p1 < w.in[1] && p2 >= 0 && p2 < w.in[2];
        col[i] = ok ? x[ch * isp + (p0 * w.in[1] + p1) * w.in[2] + p2] : 0.0f;
    }
}

extern "C" int ck_im2col(const float *x, float *col, int64_t c, const struct ck_window *w,
                         void *stream)
{
    int64_t total = c * w->k[0] * w->k[1] * w->k[2] * w->out[0] * w->out[1] * w->out[2];
    if (total <= 0)
        return 0;
    k_im2col<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, col, c, *w);
    return launched();
}

/* ---- GEMM and convolution epilogues ---- */

__global__ void k_epilogue(float *y, int64_t n, const float *bias, int64_t channels,
                           int64_t inner, const float *res, int act, float alpha, float beta)
{
    GRID_LOOP(i, n)
    {
        float v = y[i];
        if (bias)
            v += bias[(i / inner) % channels];
        if (res)
            v += res[i];
        y[i] = eng_act_apply((enum eng_act)act, v, alpha, beta);
    }
}

extern "C" int ck_epilogue(float *y, int64_t n, const float *bias, int64_t channels,
                           int64_t inner, const float *res, int act, float alpha, float beta,
                           void *stream)
{
    if (n <= 0 || (!bias && !res && act == EACT_NONE))
        return 0;
    if (channels < 1)
        channels = 1;
    if (inner < 1)
        inner = 1;
    k_epilogue<<<grid_for(n), CK_BLOCK, 0, (cudaStream_t)stream>>>(y, n, bias, channels, inner,
                                                                   res, act, alpha, beta);
    return launched();
}

__global__ void k_bias_fill(float *y, int64_t m, int64_t n, const float *c, int64_t cm,
                            int64_t cn, float scale)
{
    GRID_LOOP(i, m * n)
    {
        int64_t r = i / n, j = i - r * n;
        y[i] = scale * c[(cm == 1 ? 0 : r) * cn + (cn == 1 ? 0 : j)];
    }
}

extern "C" int ck_bias_fill(float *y, int64_t m, int64_t n, const float *c, int64_t cm,
                            int64_t cn, float scale, void *stream)
{
    if (m * n <= 0)
        return 0;
    k_bias_fill<<<grid_for(m * n), CK_BLOCK, 0, (cudaStream_t)stream>>>(y, m, n, c, cm, cn,
                                                                        scale);
    return launched();
}
