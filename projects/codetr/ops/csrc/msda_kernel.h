// Multi-scale deformable attention forward on CPU, shared by the ONNX Runtime and OpenVINO
// operators of this directory.
//
// Same arithmetic as mmcv's kernel (ms_deform_attn_im2col_bilinear): a point at normalised
// (x, y) on a level of size (h, w) samples at (x * w - 0.5, y * h - 0.5), bilinear over the
// four neighbouring cells, cells outside the map read zero, and the sample is weighted by
// its attention weight. Nothing is materialised: each output row (batch, query, head) sums
// its levels x points samples straight into the output, head_dims values at a time.
//
// Layouts (row-major, float32):
//   value              (N, S, M, D)      S = sum of h * w over the levels
//   spatial_shapes     (L, 2)            (h, w) per level, int64 or int32
//   level_start_index  (L, )             first value row of each level, int64 or int32
//   sampling_locations (N, Q, M, L, P, 2) normalised (x, y)
//   attention_weights  (N, Q, M, L, P)
//   output             (N, Q, M * D)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace codetr {

struct MSDAShapes {
  int64_t batch = 0, num_value = 0, heads = 0, dims = 0;   // value (N, S, M, D)
  int64_t queries = 0, levels = 0, points = 0;             // locations (N, Q, M, L, P, 2)
};

// Checks the five input shapes against each other; throws std::invalid_argument naming the
// input and what was expected.
inline MSDAShapes msda_check_shapes(const std::vector<int64_t>& value,
                                    const std::vector<int64_t>& spatial_shapes,
                                    const std::vector<int64_t>& level_start_index,
                                    const std::vector<int64_t>& locations,
                                    const std::vector<int64_t>& weights) {
  auto dims = [](const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + ")";
  };
  if (value.size() != 4)
    throw std::invalid_argument("MSDeformAttn: value must be (N, S, heads, head_dims), got " +
                                dims(value));
  if (locations.size() != 6 || locations[5] != 2)
    throw std::invalid_argument(
        "MSDeformAttn: sampling_locations must be (N, Q, heads, levels, points, 2), got " +
        dims(locations));
  MSDAShapes s;
  s.batch = value[0];
  s.num_value = value[1];
  s.heads = value[2];
  s.dims = value[3];
  s.queries = locations[1];
  s.levels = locations[3];
  s.points = locations[4];
  if (locations[0] != s.batch || locations[2] != s.heads)
    throw std::invalid_argument("MSDeformAttn: sampling_locations " + dims(locations) +
                                " do not match value " + dims(value) + " in batch or heads");
  const std::vector<int64_t> expected_weights = {s.batch, s.queries, s.heads, s.levels,
                                                 s.points};
  if (weights != expected_weights)
    throw std::invalid_argument("MSDeformAttn: attention_weights must be " +
                                dims(expected_weights) + ", got " + dims(weights));
  if (spatial_shapes.size() != 2 || spatial_shapes[0] != s.levels || spatial_shapes[1] != 2)
    throw std::invalid_argument("MSDeformAttn: spatial_shapes must be (" +
                                std::to_string(s.levels) + ", 2), got " +
                                dims(spatial_shapes));
  if (level_start_index.size() != 1 || level_start_index[0] != s.levels)
    throw std::invalid_argument("MSDeformAttn: level_start_index must be (" +
                                std::to_string(s.levels) + ", ), got " +
                                dims(level_start_index));
  return s;
}

// Level sizes and starts as int64, checked against the number of values.
template <typename Index>
void msda_levels(const MSDAShapes& s, const Index* spatial_shapes,
                 const Index* level_start_index, std::vector<int64_t>& hw,
                 std::vector<int64_t>& start) {
  hw.resize(2 * s.levels);
  start.resize(s.levels);
  for (int64_t l = 0; l < s.levels; ++l) {
    hw[2 * l] = static_cast<int64_t>(spatial_shapes[2 * l]);
    hw[2 * l + 1] = static_cast<int64_t>(spatial_shapes[2 * l + 1]);
    start[l] = static_cast<int64_t>(level_start_index[l]);
    if (hw[2 * l] < 0 || hw[2 * l + 1] < 0 || start[l] < 0 ||
        start[l] + hw[2 * l] * hw[2 * l + 1] > s.num_value)
      throw std::invalid_argument(
          "MSDeformAttn: level " + std::to_string(l) + " of size " +
          std::to_string(hw[2 * l]) + "x" + std::to_string(hw[2 * l + 1]) +
          " starting at value row " + std::to_string(start[l]) +
          " does not fit the " + std::to_string(s.num_value) + " value rows");
  }
}

// Output rows [begin, end) of the (N * Q * M) rows; callers split the rows over threads.
__attribute__((target_clones("avx2", "default")))
inline void msda_forward_rows(const MSDAShapes& s, const float* __restrict value,
                              const int64_t* hw, const int64_t* start,
                              const float* __restrict locations,
                              const float* __restrict weights, float* __restrict output,
                              int64_t begin, int64_t end) {
  const int64_t M = s.heads, D = s.dims, Q = s.queries, LP = s.levels * s.points;
  const int64_t row_stride = M * D;  // between neighbouring value rows (cells)
  for (int64_t row = begin; row < end; ++row) {
    const int64_t m = row % M;
    const int64_t n = row / (M * Q);
    float* __restrict out = output + row * D;  // (N, Q, M, D) = (N, Q, M * D)
    std::memset(out, 0, sizeof(float) * D);
    const float* loc = locations + row * LP * 2;
    const float* att = weights + row * LP;
    const float* value_nm = value + n * s.num_value * row_stride + m * D;
    for (int64_t l = 0; l < s.levels; ++l) {
      const int64_t h = hw[2 * l], w = hw[2 * l + 1];
      const float* level = value_nm + start[l] * row_stride;
      for (int64_t p = 0; p < s.points; ++p, loc += 2, ++att) {
        const float x = loc[0] * w - 0.5f, y = loc[1] * h - 0.5f;
        if (!(y > -1.f && x > -1.f && y < h && x < w)) continue;  // also skips NaN
        const float fy = std::floor(y), fx = std::floor(x);
        const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
        const float ly = y - fy, lx = x - fx, hy = 1.f - ly, hx = 1.f - lx;
        const float a = *att;
        // corner weights (zero for corners outside the map), as mmcv: the bilinear value
        // first, then times the attention weight
        const bool top = y0 >= 0, bottom = y0 + 1 <= h - 1;
        const bool left = x0 >= 0, right = x0 + 1 <= w - 1;
        const float w00 = (top && left) ? hy * hx : 0.f;
        const float w01 = (top && right) ? hy * lx : 0.f;
        const float w10 = (bottom && left) ? ly * hx : 0.f;
        const float w11 = (bottom && right) ? ly * lx : 0.f;
        // clamped cells: always in bounds, weight 0 where clamped
        const int64_t yt = top ? y0 : 0, yb = bottom ? y0 + 1 : h - 1;
        const int64_t xl = left ? x0 : 0, xr = right ? x0 + 1 : w - 1;
        const float* __restrict v00 = level + (yt * w + xl) * row_stride;
        const float* __restrict v01 = level + (yt * w + xr) * row_stride;
        const float* __restrict v10 = level + (yb * w + xl) * row_stride;
        const float* __restrict v11 = level + (yb * w + xr) * row_stride;
        for (int64_t d = 0; d < D; ++d)
          out[d] += a * (w00 * v00[d] + w01 * v01[d] + w10 * v10[d] + w11 * v11[d]);
      }
    }
  }
}

}  // namespace codetr
