/* loom/tensor.h: a tensor is a view (pointer, dtype, device, int64 shape and strides) over a buffer it
 * does not own. Buffers (parameter, gradient, optimizer, activation arenas) own memory.
 *
 *   loom_tensor t = loom_tensor_view(ptr, LOOM_DTYPE_F32, 2, (int64_t[]){rows, cols});
 *   int64_t n = loom_tensor_numel(&t);
 */
#ifndef LOOM_TENSOR_H
#define LOOM_TENSOR_H
#include <stddef.h>
#include <stdint.h>

#define LOOM_TENSOR_MAX_DIMS 4

typedef enum { LOOM_DTYPE_F32 = 0, LOOM_DTYPE_BF16, LOOM_DTYPE_F16 } loom_dtype;
typedef enum { LOOM_DEVICE_CPU = 0, LOOM_DEVICE_CUDA } loom_device;

typedef struct {
    void *data;
    loom_dtype dtype;
    loom_device device;
    int ndim;
    int64_t shape[LOOM_TENSOR_MAX_DIMS];
    int64_t stride[LOOM_TENSOR_MAX_DIMS]; /* in elements */
} loom_tensor;

size_t loom_dtype_size(loom_dtype d);
const char *loom_dtype_name(loom_dtype d);
/* A contiguous row-major view on the CPU. */
loom_tensor loom_tensor_view(void *data, loom_dtype dtype, int ndim, const int64_t *shape);
int64_t loom_tensor_numel(const loom_tensor *t);
int loom_tensor_is_contiguous(const loom_tensor *t);

/* bf16/f16 conversions (round to nearest even; NaN kept NaN). */
uint16_t loom_f32_to_bf16(float x);
float loom_bf16_to_f32(uint16_t x);
uint16_t loom_f32_to_f16(float x);
float loom_f16_to_f32(uint16_t x);
#endif
