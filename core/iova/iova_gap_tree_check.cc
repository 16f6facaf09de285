// SPDX-License-Identifier: Apache-2.0
// IovaGapTree::CheckInvariants: recounts the whole tree (keys, counts,
// leaf depth, parent links, every summary from scratch over all orders, the
// histogram and totals) and names the first break. Tests call it after every
// mutation; nothing on a hot path does.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "core/iova/iova_gap_tree.h"

namespace iommu::core::internal {
namespace {

// Orders a recount checks: every order a 64-bit space can have.
constexpr int kOrders = 64;

}  // namespace

absl::Status IovaGapTree::CheckSummary(const Summary& sum, const std::vector<uint32_t>& row,
                                       uint64_t max_len, uint32_t x, int slot) const {
  if (sum.max_len != max_len) {
    return absl::InternalError(absl::StrFormat(
        "gap tree node %u entry %d: max_len %#x, recount %#x", x, slot, sum.max_len, max_len));
  }
  for (int k = 0; k < kOrders; ++k) {
    if (RowWord(sum, k) != row[k]) {
      return absl::InternalError(
          absl::StrFormat("gap tree node %u entry %d: row[%d]=%#x, recount %#x", x, slot, k,
                          RowWord(sum, k), row[k]));
    }
  }
  return absl::OkStatus();
}

absl::Status IovaGapTree::CheckKernels(const Node& n, uint32_t x, const std::vector<uint32_t>& row,
                                       uint64_t max_len) const {
  // The node's own summary, and for a leaf also the scalar code the vector
  // kernel falls back to (for long ranges only, so checked here on all).
  struct Impl {
    const char* name;
    Summary (*fn)(const Node&);
  };
  const Impl leaf[] = {{"leaf", &LeafSummary}, {"scalar leaf", &LeafSummaryScalar}};
  const Impl internal[] = {{"internal", &InternalSummary}};
  for (const Impl& impl : n.leaf ? absl::MakeConstSpan(leaf) : absl::MakeConstSpan(internal)) {
    if (absl::Status st = CheckSummary(impl.fn(n), row, max_len, x, -1); !st.ok()) {
      return absl::InternalError(absl::StrFormat("%s summary: %s", impl.name, st.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status IovaGapTree::CheckNode(uint32_t x, uint32_t parent, int depth, int* leaf_depth,
                                    std::vector<uint32_t>* row_out, uint64_t* max_len_out,
                                    std::vector<uint32_t>* leaves, uint64_t* nodes) const {
  const Node& n = N(x);
  ++*nodes;
  if (n.parent != parent) {
    return absl::InternalError(
        absl::StrFormat("gap tree node %u: parent link %u, want %u", x, n.parent, parent));
  }
  const int min_fill = x == root_node_ ? (n.leaf ? 0 : 2) : kMinFill;
  if (n.count < min_fill || n.count > kFanout) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: %d entries", x, n.count));
  }
  for (int s = n.count; s < kFanout; ++s) {
    if (n.lo[s] != kNoKey) {
      return absl::InternalError(
          absl::StrFormat("gap tree node %u: unused slot %d has key %#x", x, s, n.lo[s]));
    }
  }
  row_out->assign(kOrders, 0);
  *max_len_out = 0;
  for (int s = 0; s + 1 < n.count; ++s) {
    if (n.lo[s] >= n.lo[s + 1]) {
      return absl::InternalError(absl::StrFormat("gap tree node %u: entry %d out of order", x, s));
    }
  }
  if (n.leaf) {
    if (*leaf_depth < 0) *leaf_depth = depth;
    if (depth != *leaf_depth) {
      return absl::InternalError(
          absl::StrFormat("gap tree leaf %u at depth %d, want %d", x, depth, *leaf_depth));
    }
    leaves->push_back(x);
    for (int s = 0; s < n.count; ++s) {
      if (n.lo[s] > n.hi[s]) {
        return absl::InternalError(absl::StrFormat("gap tree leaf %u: empty range %d", x, s));
      }
      *max_len_out = std::max(*max_len_out, n.hi[s] - n.lo[s] + 1);
      for (int k = 0; k < kOrders; ++k) {
        (*row_out)[k] = std::max((*row_out)[k], RoomWord(n.lo[s], n.hi[s], k));
      }
    }
    return CheckKernels(n, x, *row_out, *max_len_out);
  }
  std::vector<uint32_t> row;
  uint64_t max_len = 0;
  for (int s = 0; s < n.count; ++s) {
    const uint32_t c = n.child[s];
    if (absl::Status st = CheckNode(c, x, depth + 1, leaf_depth, &row, &max_len, leaves, nodes);
        !st.ok()) {
      return st;
    }
    if (N(c).slot != s) {
      return absl::InternalError(
          absl::StrFormat("gap tree node %u: child %u has slot %d, is at %d", x, c, N(c).slot, s));
    }
    if (n.lo[s] != N(c).lo[0]) {
      return absl::InternalError(absl::StrFormat("gap tree node %u: key %d is %#x, child's %#x", x,
                                                 s, n.lo[s], N(c).lo[0]));
    }
    if (absl::Status st = CheckSummary(Summary{n.hi[s], n.below[s], n.top[s]}, row, max_len, x, s);
        !st.ok()) {
      return st;
    }
    for (int k = 0; k < kOrders; ++k) (*row_out)[k] = std::max((*row_out)[k], row[k]);
    *max_len_out = std::max(*max_len_out, max_len);
  }
  return CheckKernels(n, x, *row_out, *max_len_out);
}

absl::Status IovaGapTree::CheckInvariants() const {
  if (N(root_node_).parent != kNil) return absl::InternalError("gap tree: root has a parent");
  int leaf_depth = -1;
  std::vector<uint32_t> row;
  uint64_t max_len = 0;
  std::vector<uint32_t> leaves;
  uint64_t nodes = 0;
  if (absl::Status s = CheckNode(root_node_, kNil, 0, &leaf_depth, &row, &max_len, &leaves, &nodes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckSummary(root_, row, max_len, kNil, -1); !s.ok()) return s;
  // The leaf chain visits the leaves in tree order and ends.
  uint32_t x = LeftmostLeaf();
  for (size_t i = 0; i < leaves.size(); ++i, x = N(x).next) {
    if (x != leaves[i]) {
      return absl::InternalError(
          absl::StrFormat("gap tree: leaf chain has %u at %u, want %u", x, i, leaves[i]));
    }
  }
  if (x != kNil) return absl::InternalError("gap tree: leaf chain runs past the last leaf");
  uint64_t count = 0;
  uint64_t pages = 0;
  uint64_t hist[kHistogramBuckets] = {};
  bool have_prev = false;
  uint64_t prev_hi = 0;
  absl::Status order_status;
  ForEach([&](Range r) {
    if (have_prev && r.lo <= prev_hi + 1 && order_status.ok()) {
      order_status = absl::InternalError(
          absl::StrFormat("gap tree: range [%#x, %#x] overlaps or touches previous ending %#x",
                          r.lo, r.hi, prev_hi));
    }
    have_prev = true;
    prev_hi = r.hi;
    ++count;
    pages += r.num_pages();
    ++hist[std::bit_width(r.num_pages()) - 1];
  });
  if (!order_status.ok()) return order_status;
  if (count != range_count_ || pages != free_pages_) {
    return absl::InternalError(
        absl::StrFormat("gap tree: counted %u ranges/%#x pages, tracked %u/%#x", count, pages,
                        range_count_, free_pages_));
  }
  for (int b = 0; b < kHistogramBuckets; ++b) {
    if (hist[b] != histogram_[b]) {
      return absl::InternalError(absl::StrFormat(
          "gap tree: histogram bucket %d counts %u, tracked %u", b, hist[b], histogram_[b]));
    }
  }
  if (nodes + 1 + free_nodes_.size() != node_slots_) {
    return absl::InternalError("gap tree: node slab leaks nodes");
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
