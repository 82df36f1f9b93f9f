// graphopt's own declarations of the part of the ONNX Runtime C API that the fused-kernel harness uses.
//
// The onnxruntime wheel ships no C headers, so graphopt declares what it needs itself, written from the
// official header (include/onnxruntime/core/session/onnxruntime_c_api.h) and ONNX Runtime's append-only rules:
// the OrtApi table of version N is a prefix of the table of every later version, and OrtApiBase::GetApi(N)
// returns it for every N from 1 up to the runtime's own ORT_API_VERSION.
//
// Version requested: 17 (onnxruntime 1.17, February 2024). Every OrtApi entry used below is in the version-1
// table (onnxruntime 1.0; ONNX Runtime asserts offsetof(OrtApi, ReleaseCustomOpDomain) == 101 slots as "the
// size of version 1"). What needs more is OrtCustomOp::KernelComputeV2, the compute callback that returns an
// OrtStatus: without it a kernel can only report an error by throwing a C++ exception across the C boundary,
// which the harness never does. The header declares it from version 16, but onnxruntime 1.16.3 still calls the
// version-1 KernelCompute for an op of version 16 (measured: the op's outputs were never produced), and
// onnxruntime 1.17.3 calls KernelComputeV2 (measured, as do 1.31 and 1.32). So the op is of version 17 and the
// library loads into onnxruntime >= 1.17; on an older one RegisterCustomOps returns a clear error status
// (measured with 1.15.1 and 1.16.3).

#pragma once

#include <stddef.h>
#include <stdint.h>

#define GRAPHOPT_ORT_API_VERSION 17
#define GRAPHOPT_ORT_PARALLEL_API_VERSION 18  // the first table certain to hold KernelContext_ParallelFor

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ONNXTensorElementDataType {  // the ONNX TensorProto codes; only the ones graphopt uses
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL = 9,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
} ONNXTensorElementDataType;

typedef enum OrtErrorCode {
  ORT_OK,
  ORT_FAIL,
  ORT_INVALID_ARGUMENT,
  ORT_NO_SUCHFILE,
  ORT_NO_MODEL,
  ORT_ENGINE_ERROR,
  ORT_RUNTIME_EXCEPTION,
} OrtErrorCode;

typedef enum OrtMemType {  // OrtCustomOp::GetInputMemoryType (read for custom ops of version > 12)
  OrtMemTypeDefault = 0,
} OrtMemType;

typedef enum OrtCustomOpInputOutputCharacteristic {  // read for custom ops of version >= 8
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL,
  INPUT_OUTPUT_VARIADIC,
} OrtCustomOpInputOutputCharacteristic;

// Opaque ONNX Runtime objects, only ever handled through pointers.
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtShapeInferContext OrtShapeInferContext;
typedef struct OrtApi OrtApi;
typedef struct OrtCustomOp OrtCustomOp;

typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);  // nullptr when the runtime does not have that version
  const char* (*GetVersionString)(void);      // e.g. "1.32.0"
} OrtApiBase;

// Unused entries are kept as opaque slots so that every used entry sits at its position in the table.
#define GRAPHOPT_ORT_SLOTS(first, last) void* unused_##first##_to_##last[(last) - (first) + 1]

struct OrtApi {
  // 0, API 1
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg);
  GRAPHOPT_ORT_SLOTS(1, 25);
  // 26-28, API 1
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* custom_op_domain, const OrtCustomOp* op);
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* custom_op_domain);
  GRAPHOPT_ORT_SLOTS(29, 50);
  // 51, API 1
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out);
  GRAPHOPT_ORT_SLOTS(52, 59);
  // 60-62, API 1
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out);
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values, size_t dim_values_length);
  GRAPHOPT_ORT_SLOTS(63, 63);
  // 64-65, API 1
  OrtStatus* (*GetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
  GRAPHOPT_ORT_SLOTS(66, 87);
  // 88-91, API 1
  OrtStatus* (*KernelContext_GetInputCount)(const OrtKernelContext* context, size_t* out);
  OrtStatus* (*KernelContext_GetOutputCount)(const OrtKernelContext* context, size_t* out);
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index, const OrtValue** out);
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dim_values,
                                        size_t dim_count, OrtValue** out);
  GRAPHOPT_ORT_SLOTS(92, 98);
  // 99, API 1
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* input);
  GRAPHOPT_ORT_SLOTS(100, 100);
  // 101, API 1 (the last entry of the version-1 table)
  void (*ReleaseCustomOpDomain)(OrtCustomOpDomain* input);
  GRAPHOPT_ORT_SLOTS(102, 273);
  // 274, onnxruntime 1.17 or 1.18: calls fn(usr_data, i) for every i in [0, total) on the session's intra-op
  // thread pool (in the calling thread when it has none); num_batch 0 lets ONNX Runtime batch the indices.
  // Read only from a table of version >= 18 (GetApi(18) not null), which holds it either way.
  OrtStatus* (*KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void*, size_t), size_t total,
                                          size_t num_batch, void* usr_data);
};

#undef GRAPHOPT_ORT_SLOTS

// The custom operator, laid out as of version 17: ONNX Runtime reads the members after KernelDestroy only
// when `version` is high enough (characteristics >= 8, memory type > 12, variadic >= 14, V2 callbacks >= 16,
// shape inference and op versions >= 17; null pointers there mean "none"), and nothing after GetEndVersion.
struct OrtCustomOp {
  uint32_t version;  // the API version the op was written against: GRAPHOPT_ORT_API_VERSION
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);  // API 1
  const char* (*GetName)(const OrtCustomOp* op);                                                 // API 1
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);                                // API 1
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);               // API 1
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);                                            // API 1
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);              // API 1
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);                                           // API 1
  void (*KernelCompute)(void* op_kernel, OrtKernelContext* context);                             // API 1
  void (*KernelDestroy)(void* op_kernel);                                                        // API 1
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);   // API 8
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);  // API 8
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);                                 // API 13
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);                                                // API 14
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);                                             // API 14
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);                                               // API 14
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);                                            // API 14
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel);                                                           // API 16
  OrtStatus* (*KernelComputeV2)(void* op_kernel, OrtKernelContext* context);                             // API 16
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);                // API 17
  int (*GetStartVersion)(const OrtCustomOp* op);                                                         // API 17
  int (*GetEndVersion)(const OrtCustomOp* op);                                                           // API 17
};

#ifdef __cplusplus
}  // extern "C"

static_assert(offsetof(OrtApi, CreateCustomOpDomain) == 26 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, GetTensorMutableData) == 51 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, GetTensorElementType) == 60 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, GetTensorShapeElementCount) == 64 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, KernelContext_GetInputCount) == 88 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, ReleaseTensorTypeAndShapeInfo) == 99 * sizeof(void*), "OrtApi layout");
static_assert(offsetof(OrtApi, ReleaseCustomOpDomain) == 101 * sizeof(void*), "OrtApi layout: end of version 1");
static_assert(offsetof(OrtCustomOp, KernelComputeV2) == 18 * sizeof(void*), "OrtCustomOp layout");
static_assert(sizeof(OrtCustomOp) == 22 * sizeof(void*), "OrtCustomOp layout of version 17");
#endif
