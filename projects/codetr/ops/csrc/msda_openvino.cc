// OpenVINO extension: operation codetr::MSDeformAttn (CPU, evaluated by the plugin through
// evaluate()) and its conversion from the ONNX node of the same name and domain. Loaded with
// Core.add_extension(path); built against the headers and CMake config of the openvino wheel,
// see CMakeLists.txt.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include "msda_kernel.h"

namespace codetr {

class MSDeformAttn : public ov::op::Op {
 public:
  OPENVINO_OP("MSDeformAttn", "codetr");

  MSDeformAttn() = default;
  explicit MSDeformAttn(const ov::OutputVector& args) : Op(args) {
    constructor_validate_and_infer_types();
  }

  void validate_and_infer_types() override {
    NODE_VALIDATION_CHECK(this, get_input_size() == 5,
                          "MSDeformAttn takes 5 inputs (value, spatial_shapes, "
                          "level_start_index, sampling_locations, attention_weights), got ",
                          get_input_size());
    const ov::PartialShape& value = get_input_partial_shape(0);
    const ov::PartialShape& locations = get_input_partial_shape(3);
    ov::PartialShape out = ov::PartialShape::dynamic(3);
    if (value.rank().is_static() && locations.rank().is_static()) {
      NODE_VALIDATION_CHECK(this, value.rank().get_length() == 4,
                            "value must be (N, S, heads, head_dims), got ", value);
      NODE_VALIDATION_CHECK(this, locations.rank().get_length() == 6,
                            "sampling_locations must be (N, Q, heads, levels, points, 2), "
                            "got ", locations);
      out = ov::PartialShape{value[0], locations[1], value[2] * value[3]};
    }
    set_output_type(0, get_input_element_type(0), out);
  }

  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
    return std::make_shared<MSDeformAttn>(args);
  }

  bool visit_attributes(ov::AttributeVisitor&) override { return true; }

  bool has_evaluate() const override {
    return get_input_element_type(0) == ov::element::f32;
  }

  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
    auto dims = [](const ov::Tensor& t) {
      const ov::Shape& shape = t.get_shape();
      return std::vector<int64_t>(shape.begin(), shape.end());
    };
    const MSDAShapes s = msda_check_shapes(dims(inputs[0]), dims(inputs[1]), dims(inputs[2]),
                                           dims(inputs[3]), dims(inputs[4]));
    std::vector<int64_t> hw, start;
    // the CPU plugin may hand integer inputs over as i32
    if (inputs[1].get_element_type() == ov::element::i32)
      msda_levels(s, inputs[1].data<const int32_t>(), inputs[2].data<const int32_t>(), hw,
                  start);
    else
      msda_levels(s, inputs[1].data<const int64_t>(), inputs[2].data<const int64_t>(), hw,
                  start);
    outputs[0].set_shape(ov::Shape{static_cast<size_t>(s.batch),
                                   static_cast<size_t>(s.queries),
                                   static_cast<size_t>(s.heads * s.dims)});
    const float* value = inputs[0].data<const float>();
    const float* locations = inputs[3].data<const float>();
    const float* weights = inputs[4].data<const float>();
    float* output = outputs[0].data<float>();
    const int64_t rows = s.batch * s.queries * s.heads, per_task = 256;
    const int64_t tasks = (rows + per_task - 1) / per_task;
    ov::parallel_for(static_cast<size_t>(tasks), [&](size_t task) {
      const int64_t begin = static_cast<int64_t>(task) * per_task;
      msda_forward_rows(s, value, hw.data(), start.data(), locations, weights, output, begin,
                        std::min(begin + per_task, rows));
    });
    return true;
  }
};

}  // namespace codetr

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<codetr::MSDeformAttn>>(),
     std::make_shared<ov::frontend::onnx::OpExtension<codetr::MSDeformAttn>>("MSDeformAttn",
                                                                            "codetr")}));
