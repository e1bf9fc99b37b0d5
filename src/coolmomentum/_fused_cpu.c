/* The fused CoolMomentum step on the CPU: one pass over every tensor of a group.
 *
 * Per element, with b the momentum buffer (v / lr) and d = (1 + rho) / 2:
 *
 *     g  = maximize ? -g : g;   g += weight_decay * p      (L2 form only)
 *     b  = rho * b - d * g
 *     p  = p * (1 - lr * weight_decay) + lr * b           (decoupled form; else p + lr * b)
 *
 * and, in the same loop, sum(b * b) for the temperature. Each parameter, gradient and buffer
 * is read once and each parameter and buffer written once: the traffic of the update alone.
 *
 * The tensors are cut into chunks of CHUNK elements, shared out among the threads; each chunk
 * writes its partial sum to its own slot, and the slots are added in order afterwards, so the
 * sum does not depend on the number of threads. Built on first use by coolmomentum._fused_cpu.
 *
 * The sum of squares adds one multiply-add per vector of elements to the update, and little
 * else. Its loop is written in the vector extension of GCC and Clang, in vectors of the
 * target's width, so that it is vectorized with or without OpenMP (a scalar accumulator is a
 * serial chain that the compiler may not reorder by itself), in lanes whose order the code
 * fixes; two vector accumulators keep the loop off the latency of one chain of additions where
 * the data are in cache. float32 squares are summed in float lanes, moved into double lanes
 * every FLOAT_BLOCK_ROWS squares: adding every square in double instead converts each vector into
 * two vectors of doubles, which took 45% more instructions per element than the update alone
 * (AVX2 and AVX-512); this takes about 10%.
 *
 * The error of a float32 sum: a float lane adds at most m = FLOAT_BLOCK_ROWS rounded squares, and
 * the two accumulators' lanes are added once more in float, so a block's lane errs by at most
 * (m + 1) u / (1 - (m + 1) u) < 3.9e-6 (u = 2^-24) of its exact sum, all terms being
 * non-negative; blocks, lanes and chunks are added in double (relative errors near 1e-13 at
 * most), so the bound holds for the whole sum. Its range is float's, as for the float32 norms
 * of the other paths: a square of |b| > 1.8e19 is infinite.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16384
/* Below this many elements per thread, waking threads costs more than it saves (PyTorch's
 * grain size for its own parallel loops). */
#define GRAIN 32768
/* Squares a float lane adds before its sum moves into a double lane (the error bound above).
 * Double lanes need no blocks: theirs is the chunk. */
#define FLOAT_BLOCK_ROWS 64

/* The target's vector width: a wider vector type is lowered element by element, through
 * memory (with AVX2, 64-byte vectors took three times the instructions of the update). */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#else
#define VECTOR_BYTES 16
#endif
typedef float float_vector __attribute__((vector_size(VECTOR_BYTES)));
typedef double double_vector __attribute__((vector_size(VECTOR_BYTES)));

/* The index of the tensor that chunk c belongs to: the last t with first_chunk[t] <= c. */
static int64_t tensor_of_chunk(const int64_t *first_chunk, int64_t n_tensors, int64_t c) {
    int64_t lo = 0, hi = n_tensors - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (first_chunk[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* The update of one vector of elements at p, g and b, the same arithmetic as the scalar
 * loops' (the tests hold the tracked and untracked updates bit for bit); *v gets the new b. */
#define DEFINE_VECTOR_UPDATE(NAME, T, V)                                                       \
static inline void NAME(V *v, T *p, const T *g, T *b, T rho, T damp, T sign, T l2,            \
                        T shrink, T lr) {                                                      \
    V vp, vg, vb;                                                                              \
    memcpy(&vp, p, sizeof vp);                                                                 \
    memcpy(&vg, g, sizeof vg);                                                                 \
    memcpy(&vb, b, sizeof vb);                                                                 \
    vb = rho * vb - damp * (sign * vg + l2 * vp);                                              \
    memcpy(b, &vb, sizeof vb);                                                                 \
    vp = vp * shrink + lr * vb;                                                                \
    memcpy(p, &vp, sizeof vp);                                                                 \
    *v = vb;                                                                                   \
}

DEFINE_VECTOR_UPDATE(update_float_vector, float, float_vector)
DEFINE_VECTOR_UPDATE(update_double_vector, double, double_vector)

#define DEFINE_STEP(NAME, T, V, UPDATE, BLOCK_ROWS)                                            \
double NAME(int64_t n_tensors, T *const *params, const T *const *grads, T *const *bufs,       \
            const int64_t *numels, double rho_, double damp_, double lr_, double wd_,         \
            int decoupled, int maximize, int track, int n_threads) {                          \
    int64_t *first_chunk = malloc((size_t)(n_tensors + 1) * sizeof(int64_t));                 \
    if (!first_chunk) return -1.0;                                                            \
    int64_t n_chunks = 0, n_elements = 0;                                                     \
    for (int64_t t = 0; t < n_tensors; t++) {                                                  \
        first_chunk[t] = n_chunks;                                                             \
        n_chunks += (numels[t] + CHUNK - 1) / CHUNK;                                           \
        n_elements += numels[t];                                                               \
    }                                                                                          \
    if (n_threads > n_elements / GRAIN) n_threads = n_elements / GRAIN;                        \
    if (n_threads < 1) n_threads = 1;                                                          \
    double *partial = malloc((size_t)(n_chunks + 1) * sizeof(double));                         \
    if (!partial) { free(first_chunk); return -1.0; }                                          \
    const T rho = (T)rho_, damp = (T)damp_, lr = (T)lr_;                                       \
    const T l2 = decoupled ? (T)0 : (T)wd_;                                                    \
    const T shrink = decoupled ? (T)(1.0 - lr_ * wd_) : (T)1;                                  \
    const T sign = maximize ? (T)-1 : (T)1;                                                    \
    const int64_t lanes = (int64_t)(sizeof(V) / sizeof(T));                                    \
    _Pragma("omp parallel for schedule(static) num_threads(n_threads)")                        \
    for (int64_t c = 0; c < n_chunks; c++) {                                                   \
        int64_t t = tensor_of_chunk(first_chunk, n_tensors, c);                                \
        int64_t start = (c - first_chunk[t]) * CHUNK;                                          \
        int64_t n = numels[t] - start < CHUNK ? numels[t] - start : CHUNK;                     \
        T *restrict p = params[t] + start;                                                     \
        const T *restrict g = grads[t] + start;                                                \
        T *restrict b = bufs[t] + start;                                                       \
        double acc = 0.0;                                                                      \
        if (track) {                                                                           \
            double lane_sums[VECTOR_BYTES / sizeof(float)] = {0};                              \
            int64_t i = 0;                                                                     \
            while (i + 2 * lanes <= n) {                                                       \
                int64_t rows = (n - i) / (2 * lanes);                                          \
                if (rows > BLOCK_ROWS) rows = BLOCK_ROWS;                                      \
                V sq0 = {0}, sq1 = {0};                                                        \
                for (int64_t row = 0; row < rows; row++, i += 2 * lanes) {                     \
                    V v0, v1;                                                                  \
                    UPDATE(&v0, p + i, g + i, b + i, rho, damp, sign, l2, shrink, lr);         \
                    UPDATE(&v1, p + i + lanes, g + i + lanes, b + i + lanes,                   \
                           rho, damp, sign, l2, shrink, lr);                                   \
                    sq0 += v0 * v0;                                                            \
                    sq1 += v1 * v1;                                                            \
                }                                                                              \
                T block_sums[VECTOR_BYTES / sizeof(T)];                                        \
                V sq = sq0 + sq1;                                                              \
                memcpy(block_sums, &sq, sizeof sq);                                            \
                _Pragma("omp simd")                                                            \
                for (int64_t j = 0; j < lanes; j++) lane_sums[j] += block_sums[j];             \
            }                                                                                  \
            for (int64_t j = 0; j < lanes; j++) acc += lane_sums[j];                           \
            for (; i < n; i++) {                                                               \
                T v = rho * b[i] - damp * (sign * g[i] + l2 * p[i]);                           \
                b[i] = v;                                                                      \
                p[i] = p[i] * shrink + lr * v;                                                 \
                acc += (double)v * (double)v;                                                  \
            }                                                                                  \
        } else {                                                                               \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; i++) {                                                  \
                T v = rho * b[i] - damp * (sign * g[i] + l2 * p[i]);                           \
                b[i] = v;                                                                      \
                p[i] = p[i] * shrink + lr * v;                                                 \
            }                                                                                  \
        }                                                                                      \
        partial[c] = acc;                                                                      \
    }                                                                                          \
    double total = 0.0;                                                                        \
    for (int64_t c = 0; c < n_chunks; c++) total += partial[c];                                \
    free(partial);                                                                             \
    free(first_chunk);                                                                         \
    return total;                                                                              \
}

DEFINE_STEP(coolmomentum_step_float32, float, float_vector, update_float_vector, FLOAT_BLOCK_ROWS)
DEFINE_STEP(coolmomentum_step_float64, double, double_vector, update_double_vector, CHUNK)
