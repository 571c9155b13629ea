// ONNX Runtime custom operator codetr::MSDeformAttn (CPU), loaded with
// SessionOptions.register_custom_ops_library(path). Built against ONNX Runtime's C/C++ API
// headers only (the API table comes from the runtime at registration), see CMakeLists.txt.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <exception>
#include <mutex>

#include "msda_kernel.h"

namespace {

constexpr int64_t kRowsPerTask = 256;

struct Job {
  codetr::MSDAShapes shapes;
  const float* value;
  const int64_t* hw;
  const int64_t* start;
  const float* locations;
  const float* weights;
  float* output;
  int64_t rows;
};

void run_task(void* data, size_t task) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t begin = static_cast<int64_t>(task) * kRowsPerTask;
  codetr::msda_forward_rows(job.shapes, job.value, job.hw, job.start, job.locations,
                            job.weights, job.output, begin,
                            std::min(begin + kRowsPerTask, job.rows));
}

struct MSDeformAttnKernel {
  MSDeformAttnKernel(const OrtApi&, const OrtKernelInfo*) {}

  // errors (bad shapes, API failures) go back to the runtime as a status, not a crash
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
    return nullptr;
  }

  void Compute(OrtKernelContext* raw_context) {
    Ort::KernelContext context(raw_context);
    Ort::ConstValue value = context.GetInput(0), spatial_shapes = context.GetInput(1),
                    level_start = context.GetInput(2), locations = context.GetInput(3),
                    weights = context.GetInput(4);
    auto shape = [](const Ort::ConstValue& v) {
      return v.GetTensorTypeAndShapeInfo().GetShape();
    };
    Job job;
    job.shapes = codetr::msda_check_shapes(shape(value), shape(spatial_shapes),
                                           shape(level_start), shape(locations),
                                           shape(weights));
    const codetr::MSDAShapes& s = job.shapes;
    std::vector<int64_t> hw, start;
    codetr::msda_levels(s, spatial_shapes.GetTensorData<int64_t>(),
                        level_start.GetTensorData<int64_t>(), hw, start);
    Ort::UnownedValue output = context.GetOutput(0, {s.batch, s.queries, s.heads * s.dims});
    job.value = value.GetTensorData<float>();
    job.hw = hw.data();
    job.start = start.data();
    job.locations = locations.GetTensorData<float>();
    job.weights = weights.GetTensorData<float>();
    job.output = output.GetTensorMutableData<float>();
    job.rows = s.batch * s.queries * s.heads;
    const size_t tasks = static_cast<size_t>((job.rows + kRowsPerTask - 1) / kRowsPerTask);
    if (tasks > 1)
      context.ParallelFor(run_task, tasks, 0, &job);  // ONNX Runtime's intra-op threads
    else if (tasks == 1)
      run_task(&job, 0);
  }
};

struct MSDeformAttnOp : Ort::CustomOpBase<MSDeformAttnOp, MSDeformAttnKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info,
                              void** kernel) const {
    *kernel = new MSDeformAttnKernel(api, info);
    return nullptr;
  }
  const char* GetName() const { return "MSDeformAttn"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return (index == 1 || index == 2) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                                      : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

}  // namespace

extern "C" ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // an older runtime: nothing to report the error with
  Ort::InitApi(api);
  // one domain for the process: sessions keep pointers to it
  static MSDeformAttnOp op;
  static Ort::CustomOpDomain* domain = nullptr;
  static std::mutex mutex;
  try {
    std::lock_guard<std::mutex> lock(mutex);
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("codetr");
      domain->Add(&op);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
