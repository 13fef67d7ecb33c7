// lmforge's decode kernels (kernels.c) as PyTorch operators, in the namespace lmforge_native, so
// that a compiled decode step calls them from C++ (a Python-registered operator costs about 25 µs
// a call there, as much as a small layer's product).
//
// A quantized layer's kernel is made once (`make_int8`, `make_int4`, `make_w8a8`) and kept here
// under a number, with the tensors it reads, until `release`; `linear(x, number, out_features)`
// runs it, and a graph holds only the number. `dense` is F.linear for fp32 and bf16 weights, which
// the kernel reads as they are.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kernels.h"

namespace {

enum class Kind { int8, int4, w8a8 };

struct Kernel {
    Kind kind;
    int64_t group = 0;  // int4: inputs per scale
    int64_t rows = 0;   // output rows of all parts
    std::vector<at::Tensor> kept;  // what the parts point into
    std::vector<Part> parts;
};

std::mutex registry_mutex;
std::unordered_map<int64_t, std::shared_ptr<const Kernel>> registry;
int64_t next_number = 0;

const void *pointer(const at::Tensor &tensor, at::ScalarType dtype, const char *what) {
    TORCH_CHECK(tensor.device().is_cpu() && tensor.is_contiguous() && tensor.scalar_type() == dtype,
                "lmforge_native: ", what, " must be a contiguous CPU tensor of ", dtype);
    return tensor.data_ptr();
}

int64_t keep(std::shared_ptr<Kernel> kernel) {
    for (const Part &part : kernel->parts) kernel->rows += part.rows;
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry[next_number] = std::move(kernel);
    return next_number++;
}

int64_t make_int8(const at::Tensor &codes, const at::Tensor &scales) {
    auto kernel = std::make_shared<Kernel>();
    kernel->kind = Kind::int8;
    kernel->kept = {codes, scales};
    kernel->parts.push_back(Part{pointer(codes, at::kChar, "codes"), codes.size(0),
                                 static_cast<const float *>(pointer(scales, at::kFloat, "scales")), nullptr, nullptr});
    return keep(kernel);
}

int64_t make_int4(const at::Tensor &codes, const at::Tensor &scales, const at::Tensor &zeros, int64_t group) {
    TORCH_CHECK(group % 32 == 0, "lmforge_native: int4 groups must be a multiple of 32, got ", group);
    auto kernel = std::make_shared<Kernel>();
    kernel->kind = Kind::int4;
    kernel->group = group;
    kernel->kept = {codes, scales, zeros};
    kernel->parts.push_back(Part{pointer(codes, at::kByte, "codes"), codes.size(0),
                                 static_cast<const float *>(pointer(scales, at::kFloat, "scales")),
                                 static_cast<const float *>(pointer(zeros, at::kFloat, "zeros")), nullptr});
    return keep(kernel);
}

// `codes` interleaved as the w8a8 kernel reads them ([rows / 8][k / 4][8][4]: native.interleave);
// the parts' rows come from their scales.
int64_t make_w8a8(const std::vector<at::Tensor> &codes, const std::vector<at::Tensor> &scales,
                  const std::vector<at::Tensor> &row_sums) {
    TORCH_CHECK(!codes.empty() && codes.size() == scales.size() && codes.size() == row_sums.size(),
                "lmforge_native: w8a8 needs codes, scales and row sums for each part");
    auto kernel = std::make_shared<Kernel>();
    kernel->kind = Kind::w8a8;
    for (size_t i = 0; i < codes.size(); i++) {
        kernel->kept.insert(kernel->kept.end(), {codes[i], scales[i], row_sums[i]});
        kernel->parts.push_back(Part{pointer(codes[i], at::kChar, "codes"), scales[i].size(0),
                                     static_cast<const float *>(pointer(scales[i], at::kFloat, "scales")), nullptr,
                                     static_cast<const int32_t *>(pointer(row_sums[i], at::kInt, "row sums"))});
    }
    return keep(kernel);
}

void release(int64_t number) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry.erase(number);
}

at::Tensor linear(const at::Tensor &input, int64_t number, int64_t out_features) {
    std::shared_ptr<const Kernel> kernel;
    {
        std::lock_guard<std::mutex> lock(registry_mutex);
        auto found = registry.find(number);
        TORCH_CHECK(found != registry.end(), "lmforge_native: no kernel ", number);
        kernel = found->second;
    }
    TORCH_CHECK(input.dim() == 2 && kernel->rows == out_features, "lmforge_native: a [rows, in] input for ",
                kernel->rows, " outputs");
    at::Tensor x = input.contiguous();
    const float *data = static_cast<const float *>(pointer(x, at::kFloat, "the input"));
    const int64_t m = x.size(0), k = x.size(1);
    at::Tensor out = at::empty({m, kernel->rows}, x.options());
    float *result = out.data_ptr<float>();
    const int threads = at::get_num_threads();
    switch (kernel->kind) {
    case Kind::int8:
        lmforge_int8(data, m, k, kernel->parts.data(), result, threads);
        break;
    case Kind::int4: {
        std::vector<float> scratch(m * (k + k / kernel->group));
        lmforge_int4(data, m, k, kernel->group, kernel->parts.data(), result, scratch.data(), threads);
        break;
    }
    case Kind::w8a8: {
        std::vector<uint8_t> scratch(m * k);
        lmforge_w8a8(data, m, k, kernel->parts.data(), static_cast<int>(kernel->parts.size()), kernel->rows, result,
                     scratch.data(), threads);
        break;
    }
    }
    return out;
}

at::Tensor dense(const at::Tensor &input, const at::Tensor &weight_in, const std::optional<at::Tensor> &bias_in) {
    const at::ScalarType dtype = weight_in.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "lmforge_native: dense takes fp32 or bf16 weights");
    TORCH_CHECK(input.dim() == 2 && weight_in.dim() == 2 && input.size(1) == weight_in.size(1),
                "lmforge_native: dense takes x [m, k] and a weight [rows, k]");
    at::Tensor x = input.contiguous(), weight = weight_in.contiguous();
    at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
    const int64_t m = x.size(0), k = x.size(1), rows = weight.size(0);
    at::Tensor out = at::empty({m, rows}, x.options());
    const bool bf16 = dtype == at::kBFloat16;
    std::vector<float> scratch(bf16 ? m * k : 0);
    lmforge_float(pointer(x, dtype, "the input"), m, k, pointer(weight, dtype, "the weight"),
                  bias.defined() ? pointer(bias, dtype, "the bias") : nullptr, rows, bf16, out.data_ptr(),
                  scratch.data(), at::get_num_threads());
    return out;
}

}  // namespace

TORCH_LIBRARY(lmforge_native, m) {
    m.def("make_int8(Tensor codes, Tensor scales) -> int");
    m.def("make_int4(Tensor codes, Tensor scales, Tensor zeros, int group_size) -> int");
    m.def("make_w8a8(Tensor[] codes, Tensor[] scales, Tensor[] row_sums) -> int");
    m.def("release(int number) -> ()");
    m.def("linear(Tensor x, int number, int out_features) -> Tensor");
    m.def("dense(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
    m.impl("make_int8", c10::DispatchKey::CompositeExplicitAutograd, &make_int8);
    m.impl("make_int4", c10::DispatchKey::CompositeExplicitAutograd, &make_int4);
    m.impl("make_w8a8", c10::DispatchKey::CompositeExplicitAutograd, &make_w8a8);
    m.impl("release", c10::DispatchKey::CompositeExplicitAutograd, &release);
}

TORCH_LIBRARY_IMPL(lmforge_native, CPU, m) {
    m.impl("linear", &linear);
    m.impl("dense", &dense);
}
