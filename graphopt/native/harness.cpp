// The harness that turns kernel fragments into an ONNX Runtime custom-op library (see FUSED_CONTRACT.md).
//
// graphopt/native/build.py compiles one translation unit: a prelude of standard headers and the graphopt_OpEntry
// type, then each fragment in a namespace of its own (it defines GRAPHOPT_OP_NAME, graphopt_num_inputs/outputs,
// graphopt_input/output_types, graphopt_elementwise_inputs and graphopt_kernel, or GRAPHOPT_REDUCTION and
// graphopt_reduce), followed by op_entry.inc, which checks those and describes the op as a graphopt_OpEntry; then
// the table graphopt_ops[graphopt_num_ops] of every op, then this file. The library exports one symbol,
// RegisterCustomOps, which registers every op of the table in domain "ai.graphopt.fused" (one domain object, so
// one session can run every op of the library). Every failure is returned as an OrtStatus: no C++ exception
// crosses the C boundary.

#include <stdio.h>

#include <atomic>
#include <new>

#include "ort_api.h"

#define GRAPHOPT_DOMAIN "ai.graphopt.fused"
#define GRAPHOPT_EXPORT extern "C" __attribute__((visibility("default")))

static_assert(graphopt_num_ops >= 1, "a library holds at least one op");

namespace {

const int kMaxRank = 64;
// An element-wise op over more elements than this runs as parts of this many elements on the session's intra-op
// threads (KernelContext_ParallelFor), where onnxruntime offers it: a training step's update runs on every core,
// and a part boundary changes no result (element i depends on element i only). A multiple of 64, so every part
// starts aligned as the buffer does. Reductions run on one thread: their fragments sum rows, which the harness
// does not know the length of (the executor splits them itself, at rows).
const int64_t kPart = 1 << 16;

// The table holding KernelContext_ParallelFor, or null (set when the library is registered).
std::atomic<const OrtApi*> parallel_api{nullptr};

// One registered op: the OrtCustomOp ONNX Runtime calls back with (first, so a pointer to it is a pointer to
// the Op), and the fragment it runs.
struct Op {
  OrtCustomOp base;
  const graphopt_OpEntry* entry;
};

const graphopt_OpEntry* entry_of(const OrtCustomOp* op) { return reinterpret_cast<const Op*>(op)->entry; }

struct Kernel {
  const OrtApi* api;
  const graphopt_OpEntry* entry;
};

// An error status whose message names the op, formatted like printf.
template <typename... Args>
OrtStatus* error(const OrtApi* api, const graphopt_OpEntry* op, OrtErrorCode code, const char* format,
                 Args... args) {
  char message[512];
  int used = snprintf(message, sizeof message, "graphopt fused op %s (domain %s): ", op->name, GRAPHOPT_DOMAIN);
  if (used > 0 && used < (int)sizeof message) snprintf(message + used, sizeof message - used, format, args...);
  return api->CreateStatus(code, message);
}

// Element type, element count and shape of a tensor value (the shape only when `dims` is given).
OrtStatus* describe(const OrtApi* api, const graphopt_OpEntry* op, const OrtValue* value,
                    ONNXTensorElementDataType* type, size_t* count, int64_t* dims, size_t* rank) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* status = api->GetTensorTypeAndShape(value, &info);
  if (!status) status = api->GetTensorElementType(info, type);
  if (!status) status = api->GetTensorShapeElementCount(info, count);
  if (!status && dims) status = api->GetDimensionsCount(info, rank);
  if (!status && dims && *rank > (size_t)kMaxRank) {
    status = error(api, op, ORT_INVALID_ARGUMENT, "input 0 has rank %zu; at most %d is supported", *rank, kMaxRank);
  }
  if (!status && dims) status = api->GetDimensions(info, dims, *rank);
  if (info) api->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

// Reads the inputs' data pointers after checking their types, that every elementwise input has the element
// count n of input 0, and that every scalar input holds one element.
OrtStatus* gather_inputs(const OrtApi* api, const graphopt_OpEntry* op, OrtKernelContext* context, const void** in,
                         int64_t* n, int64_t* dims, size_t* rank) {
  for (int k = 0; k < op->num_inputs; ++k) {
    const OrtValue* value = nullptr;
    OrtStatus* status = api->KernelContext_GetInput(context, (size_t)k, &value);
    if (status) return status;
    if (!value) return error(api, op, ORT_INVALID_ARGUMENT, "input %d is missing", k);
    ONNXTensorElementDataType type;
    size_t count = 0;
    status = describe(api, op, value, &type, &count, k == 0 ? dims : nullptr, rank);
    if (status) return status;
    if ((int)type != op->input_types[k]) {
      return error(api, op, ORT_INVALID_ARGUMENT,
                   "input %d has element type %d, expected %d (ONNX TensorProto codes)", k, (int)type,
                   op->input_types[k]);
    }
    if (k == 0) {
      *n = (int64_t)count;
    } else if (k < op->elementwise_inputs && (int64_t)count != *n) {
      return error(api, op, ORT_INVALID_ARGUMENT,
                   "elementwise input %d has %zu elements but input 0 has %lld; all %d elementwise inputs of a fused "
                   "update must have the same number of elements",
                   k, count, (long long)*n, op->elementwise_inputs);
    } else if (k >= op->elementwise_inputs && count != 1) {
      return error(api, op, ORT_INVALID_ARGUMENT, "scalar input %d has %zu elements, expected 1", k, count);
    }
    void* data = nullptr;
    status = api->GetTensorMutableData(const_cast<OrtValue*>(value), &data);
    if (status) return status;
    in[k] = data;
  }
  return nullptr;
}

// The output's data pointer: the buffer IOBinding provided when there is one (so an output bound onto an input
// is updated in place), else one ONNX Runtime allocates.
OrtStatus* output_data(const OrtApi* api, const graphopt_OpEntry* op, OrtKernelContext* context, int k,
                       const int64_t* dims, size_t rank, void** data) {
  OrtValue* value = nullptr;
  OrtStatus* status = api->KernelContext_GetOutput(context, (size_t)k, dims, rank, &value);
  if (status) return status;
  if (!value) return error(api, op, ORT_FAIL, "onnxruntime gave no buffer for output %d", k);
  return api->GetTensorMutableData(value, data);
}

OrtStatus* compute(const OrtApi* api, const graphopt_OpEntry* op, OrtKernelContext* context) {
  const void* in[GRAPHOPT_MAX_OPERANDS];
  void* out[GRAPHOPT_MAX_OPERANDS];
  int64_t n = 0;
  int64_t dims[kMaxRank];
  size_t rank = 0;
  OrtStatus* status = gather_inputs(api, op, context, in, &n, dims, &rank);
  if (status) return status;
  if (op->reduce) {
    status = output_data(api, op, context, 0, dims, 0, &out[0]);  // a 0-d output
    if (status) return status;
    *static_cast<double*>(out[0]) = op->reduce(0, n, in);
    return nullptr;
  }
  for (int k = 0; k < op->num_outputs; ++k) {
    status = output_data(api, op, context, k, dims, rank, &out[k]);
    if (status) return status;
  }
  const OrtApi* parallel = parallel_api.load(std::memory_order_relaxed);
  if (!parallel || n <= kPart) {
    op->kernel(0, n, in, out);
    return nullptr;
  }
  struct Work {
    const graphopt_OpEntry* op;
    const void* const* in;
    void* const* out;
    int64_t n;
  } work{op, in, out, n};
  auto part = [](void* data, size_t k) {
    const Work* w = static_cast<const Work*>(data);
    const int64_t begin = (int64_t)k * kPart;
    w->op->kernel(begin, w->n - begin < kPart ? w->n : begin + kPart, w->in, w->out);
  };
  return parallel->KernelContext_ParallelFor(context, part, (size_t)((n + kPart - 1) / kPart), 0, &work);
}

// ---- the OrtCustomOp callbacks ----

OrtStatus* create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo*, void** kernel) {
  Kernel* made = new (std::nothrow) Kernel{api, entry_of(op)};
  if (!made) return api->CreateStatus(ORT_FAIL, "graphopt fused op: out of memory creating the kernel");
  *kernel = made;
  return nullptr;
}

void* create_kernel_v1(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo*) {
  return new (std::nothrow) Kernel{api, entry_of(op)};  // never called: onnxruntime >= 1.17 uses CreateKernelV2
}

OrtStatus* kernel_compute(void* kernel, OrtKernelContext* context) {
  const Kernel* self = static_cast<Kernel*>(kernel);
  try {
    return compute(self->api, self->entry, context);
  } catch (...) {
    return error(self->api, self->entry, ORT_RUNTIME_EXCEPTION, "unexpected C++ exception in the kernel");
  }
}

void kernel_compute_v1(void*, OrtKernelContext*) {}  // never called: onnxruntime >= 1.17 uses KernelComputeV2

void kernel_destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

const char* op_name(const OrtCustomOp* op) { return entry_of(op)->name; }
const char* op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
size_t input_count(const OrtCustomOp* op) { return (size_t)entry_of(op)->num_inputs; }
size_t output_count(const OrtCustomOp* op) { return (size_t)entry_of(op)->num_outputs; }

ONNXTensorElementDataType input_type(const OrtCustomOp* op, size_t index) {
  return (ONNXTensorElementDataType)entry_of(op)->input_types[index];
}

ONNXTensorElementDataType output_type(const OrtCustomOp* op, size_t index) {
  return (ONNXTensorElementDataType)entry_of(op)->output_types[index];
}

OrtCustomOpInputOutputCharacteristic required(const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; }
OrtMemType default_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int one(const OrtCustomOp*) { return 1; }

const OrtCustomOp kCallbacks = {
    GRAPHOPT_ORT_API_VERSION,
    create_kernel_v1,
    op_name,
    op_provider,
    input_type,
    input_count,
    output_type,
    output_count,
    kernel_compute_v1,
    kernel_destroy,
    required,
    required,
    default_memory,
    one,
    one,
    one,
    one,
    create_kernel,
    kernel_compute,
    nullptr,  // InferOutputShapeFn: none, ONNX Runtime's type inference from the declared types suffices
    nullptr,  // GetStartVersion: since version 1 of the domain
    nullptr,  // GetEndVersion: no end
};

// Every op of the library, made once (a function-local static: thread-safe) and never freed, as ONNX Runtime
// keeps pointers to them for as long as the sessions that use them.
const Op* the_ops() {
  static Op ops[graphopt_num_ops];
  static const bool made = [] {
    for (int k = 0; k < graphopt_num_ops; ++k) ops[k] = Op{kCallbacks, graphopt_ops[k]};
    return true;
  }();
  (void)made;
  return ops;
}

}  // namespace

// Called by ONNX Runtime when a session options object registers this library. The domain is never released:
// ONNX Runtime requires it to outlive every session created from those options, which the library cannot
// know, and it is a few hundred bytes per registration.
GRAPHOPT_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(GRAPHOPT_ORT_API_VERSION);
  if (!api) {
    const OrtApi* oldest = base->GetApi(1);
    if (!oldest) return nullptr;  // cannot even report the error; nothing is registered
    char message[256];
    snprintf(message, sizeof message,
             "graphopt fused op %s needs onnxruntime >= 1.17 (C API version %d); this onnxruntime is %s",
             graphopt_ops[0]->name, GRAPHOPT_ORT_API_VERSION, base->GetVersionString());
    return oldest->CreateStatus(ORT_FAIL, message);
  }
  parallel_api.store(base->GetApi(GRAPHOPT_ORT_PARALLEL_API_VERSION), std::memory_order_relaxed);
  const Op* ops = the_ops();
  OrtCustomOpDomain* domain = nullptr;
  OrtStatus* status = api->CreateCustomOpDomain(GRAPHOPT_DOMAIN, &domain);
  for (int k = 0; k < graphopt_num_ops && !status; ++k) status = api->CustomOpDomain_Add(domain, &ops[k].base);
  if (!status) status = api->AddCustomOpDomain(options, domain);
  if (status && domain) api->ReleaseCustomOpDomain(domain);
  return status;
}
