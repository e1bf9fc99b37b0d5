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
 */
#include <stdint.h>
#include <stdlib.h>

#define CHUNK 16384
/* Below this many elements per thread, waking threads costs more than it saves (PyTorch's
 * grain size for its own parallel loops). */
#define GRAIN 32768

/* The index of the tensor that chunk c belongs to: the last t with first_chunk[t] <= c. */
static int64_t tensor_of_chunk(const int64_t *first_chunk, int64_t n_tensors, int64_t c) {
    int64_t lo = 0, hi = n_tensors - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (first_chunk[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

#define DEFINE_STEP(NAME, T)                                                                   \
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
            _Pragma("omp simd reduction(+:acc)")                                               \
            for (int64_t i = 0; i < n; i++) {                                                  \
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

DEFINE_STEP(coolmomentum_step_float32, float)
DEFINE_STEP(coolmomentum_step_float64, double)
