// TAR on CPU in one parallel pass: softmax(Q·Kᵀ·scale + rowmax·ΔA)·V for every [N, d] map of a
// [batch, heads, N, d] call (paper §3.4, eq. 3), as attention.tar_attention defines it.
//
// Why a kernel: temporal attention is a huge batch of small maps. Eager PyTorch runs TAR as five
// ops over chunks of the batch (two products, row max, band, softmax), each its own parallel
// region and pass over memory, plus copies for diffusers' strided views; SDPA's flash kernel does
// the same work in one region with the map in cache. This does what SDPA does, plus the band:
// each thread takes whole maps, multiplies straight on the strided views (BLAS leading
// dimensions), and keeps the map in a thread-local buffer between the products.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>
#include <vector>

// The BLAS that libtorch_cpu links (MKL on x86) and exports; inside a parallel region it runs on
// the calling thread.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kWidth = Vec::size();

float horizontal_max(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

float horizontal_sum(Vec v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// One query row of logits φ [n], in place: exp(φ + max(φ)·ΔA − shift), shift the biased row's max
// (softmax is unchanged by it and nothing overflows). Returns the row's sum. The max keeps its sign,
// as in the authors' implementation.
float regularised_exp_row(float* row, const float* band, int64_t n) {
  const Vec lowest(-std::numeric_limits<float>::infinity());
  const int64_t tail = n % kWidth, body = n - tail;
  Vec most = lowest;
  for (int64_t j = 0; j < body; j += kWidth) most = at::vec::maximum(most, Vec::loadu(row + j));
  if (tail) most = at::vec::maximum(most, Vec::set(lowest, Vec::loadu(row + body, tail), tail));
  const Vec row_max(horizontal_max(most));
  Vec biased_most = lowest;
  for (int64_t j = 0; j < body; j += kWidth) {
    const Vec x = at::vec::fmadd(row_max, Vec::loadu(band + j), Vec::loadu(row + j));
    x.store(row + j);
    biased_most = at::vec::maximum(biased_most, x);
  }
  if (tail) {
    const Vec x = at::vec::fmadd(row_max, Vec::loadu(band + body, tail), Vec::loadu(row + body, tail));
    x.store(row + body, tail);
    biased_most = at::vec::maximum(biased_most, Vec::set(lowest, x, tail));
  }
  const Vec shift(horizontal_max(biased_most));
  Vec sum(0.f);
  for (int64_t j = 0; j < body; j += kWidth) {
    const Vec e = (Vec::loadu(row + j) - shift).exp_u20();  // SDPA's exp on CPU
    e.store(row + j);
    sum = sum + e;
  }
  if (tail) {
    const Vec e = Vec::set(Vec(0.f), (Vec::loadu(row + body, tail) - shift).exp_u20(), tail);
    e.store(row + body, tail);
    sum = sum + e;
  }
  return horizontal_sum(sum);
}

void scale_row(float* row, float factor, int64_t n) {
  const Vec f(factor);
  const int64_t tail = n % kWidth, body = n - tail;
  for (int64_t j = 0; j < body; j += kWidth) (Vec::loadu(row + j) * f).store(row + j);
  if (tail) (Vec::loadu(row + body, tail) * f).store(row + body, tail);
}

void check_operand(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 4,
              name, " must be a float32 CPU tensor [batch, heads, N, d]");
  TORCH_CHECK(t.stride(3) == 1, name, " must have unit stride in its last dimension");
}

}  // namespace

// query [B, H, Nq, d], key [B, H, Nk, d], value [B, H, Nk, dv], output [B, H, Nq, dv]: any strides
// with the last one 1. band ΔA [Nq, Nk] contiguous. Writes output, whose rows may be strided too
// (attention.tar_attention hands SDPA's [B, Nq, H, dv] layout).
void tar_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                   const at::Tensor& band, double scale, at::Tensor& output) {
  check_operand(query, "query");
  check_operand(key, "key");
  check_operand(value, "value");
  check_operand(output, "output");
  const int64_t batch = query.size(0), heads = query.size(1);
  const int64_t queries = query.size(2), keys = key.size(2);
  TORCH_CHECK(key.size(0) == batch && value.size(0) == batch && output.size(0) == batch &&
                  key.size(1) == heads && value.size(1) == heads && output.size(1) == heads,
              "query, key, value and output must share batch and heads");
  TORCH_CHECK(key.size(3) == query.size(3) && value.size(2) == keys && output.size(2) == queries &&
                  output.size(3) == value.size(3),
              "operand shapes do not make an attention");
  TORCH_CHECK(band.scalar_type() == at::kFloat && band.is_contiguous() && band.dim() == 2 &&
                  band.size(0) == queries && band.size(1) == keys,
              "band must be a contiguous float32 [Nq, Nk] tensor");
  const int nq = queries, nk = keys, d = query.size(3), dv = value.size(3);
  const int ldq = query.stride(2), ldk = key.stride(2), ldv = value.stride(2), ldo = output.stride(2);
  const float alpha = scale, zero = 0.f, one = 1.f;
  const float* q = query.data_ptr<float>();
  const float* k = key.data_ptr<float>();
  const float* v = value.data_ptr<float>();
  const float* g = band.data_ptr<float>();
  float* o = output.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> logits(queries * keys), inverse_sums(queries);
    for (int64_t map = begin; map < end; ++map) {
      const int64_t b = map / heads, h = map % heads;
      float* out = o + b * output.stride(0) + h * output.stride(1);
      // Column-major BLAS on row-major matrices: logitsᵀ = K·Qᵀ, then outputᵀ = Vᵀ·logitsᵀ.
      sgemm_("T", "N", &nk, &nq, &d, &alpha, k + b * key.stride(0) + h * key.stride(1), &ldk,
             q + b * query.stride(0) + h * query.stride(1), &ldq, &zero, logits.data(), &nk);
      for (int64_t i = 0; i < queries; ++i)
        inverse_sums[i] = 1.f / regularised_exp_row(logits.data() + i * keys, g + i * keys, keys);
      // Rows are normalised where they are shorter: the map's before the product, or the output's.
      if (keys <= dv)
        for (int64_t i = 0; i < queries; ++i) scale_row(logits.data() + i * keys, inverse_sums[i], keys);
      sgemm_("N", "N", &dv, &nq, &nk, &one, v + b * value.stride(0) + h * value.stride(1), &ldv,
             logits.data(), &nk, &zero, out, &ldo);
      if (keys > dv)
        for (int64_t i = 0; i < queries; ++i) scale_row(out + i * ldo, inverse_sums[i], dv);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  // Without the GIL, as torch's own ops: other Python threads (Prefect's, progress bars) run meanwhile.
  module.def("tar_attention", &tar_attention, "TAR attention into output (see cpu_kernel.cpp)",
             pybind11::call_guard<pybind11::gil_scoped_release>());
}
