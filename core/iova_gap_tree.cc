#include "core/iova_gap_tree.h"

#include <algorithm>
#include <bit>
#include <cassert>

#include "absl/strings/str_format.h"
#include "core/bits.h"

namespace iommu::core::internal {

IovaGapTree::IovaGapTree(int num_orders) : num_orders_(num_orders) {
  assert(num_orders >= 1 && num_orders <= 64);
  nodes_.push_back(Node{0, 0, kNil, kNil, kNil, 0});
  aug_.assign(num_orders_, 0);
}

uint32_t IovaGapTree::NewNode(uint64_t lo, uint64_t hi) {
  uint32_t x;
  if (!free_nodes_.empty()) {
    x = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    x = static_cast<uint32_t>(nodes_.size());
    assert(x != 0 && nodes_.size() < UINT32_MAX);
    nodes_.push_back(Node{});
    aug_.resize(aug_.size() + num_orders_);
  }
  nodes_[x] = Node{lo, hi, kNil, kNil, kNil, 1};
  Pull(x);
  return x;
}

void IovaGapTree::FreeNode(uint32_t x) { free_nodes_.push_back(x); }

bool IovaGapTree::Pull(uint32_t x) {
  const Node& n = nodes_[x];
  uint64_t* row = AugRow(x);
  const uint64_t* l = AugRow(n.left);
  const uint64_t* r = AugRow(n.right);
  bool changed = false;
  for (int k = 0; k < num_orders_; ++k) {
    const uint64_t v = std::max(Room(n.lo, n.hi, k), std::max(l[k], r[k]));
    changed |= v != row[k];
    row[k] = v;
  }
  return changed;
}

void IovaGapTree::UpdateHeight(uint32_t x) {
  Node& n = nodes_[x];
  n.height = 1 + std::max(nodes_[n.left].height, nodes_[n.right].height);
}

void IovaGapTree::ReplaceChild(uint32_t parent, uint32_t old_child, uint32_t new_child) {
  if (parent == kNil) {
    root_ = new_child;
  } else if (nodes_[parent].left == old_child) {
    nodes_[parent].left = new_child;
  } else {
    assert(nodes_[parent].right == old_child);
    nodes_[parent].right = new_child;
  }
  if (new_child != kNil) nodes_[new_child].parent = parent;
}

uint32_t IovaGapTree::RotateLeft(uint32_t x) {
  const uint32_t y = nodes_[x].right;
  const uint32_t b = nodes_[y].left;
  ReplaceChild(nodes_[x].parent, x, y);
  nodes_[x].right = b;
  if (b != kNil) nodes_[b].parent = x;
  nodes_[y].left = x;
  nodes_[x].parent = y;
  UpdateHeight(x);
  UpdateHeight(y);
  Pull(x);
  Pull(y);
  return y;
}

uint32_t IovaGapTree::RotateRight(uint32_t x) {
  const uint32_t y = nodes_[x].left;
  const uint32_t b = nodes_[y].right;
  ReplaceChild(nodes_[x].parent, x, y);
  nodes_[x].left = b;
  if (b != kNil) nodes_[b].parent = x;
  nodes_[y].right = x;
  nodes_[x].parent = y;
  UpdateHeight(x);
  UpdateHeight(y);
  Pull(x);
  Pull(y);
  return y;
}

void IovaGapTree::FixUpward(uint32_t x) {
  while (x != kNil) {
    const int old_height = nodes_[x].height;
    const bool aug_changed = Pull(x);
    UpdateHeight(x);
    const Node& n = nodes_[x];
    const int balance = nodes_[n.left].height - nodes_[n.right].height;
    uint32_t subtree = x;
    if (balance > 1) {
      const uint32_t l = n.left;
      if (nodes_[nodes_[l].left].height < nodes_[nodes_[l].right].height) RotateLeft(l);
      subtree = RotateRight(x);
    } else if (balance < -1) {
      const uint32_t r = n.right;
      if (nodes_[nodes_[r].right].height < nodes_[nodes_[r].left].height) RotateRight(r);
      subtree = RotateLeft(x);
    }
    // Rotations keep the subtree's aug row; if neither it nor the height moved,
    // no ancestor can change.
    if (!aug_changed && nodes_[subtree].height == old_height) return;
    x = nodes_[subtree].parent;
  }
}

void IovaGapTree::CountIn(uint64_t num_pages) {
  ++range_count_;
  free_pages_ += num_pages;
  ++histogram_[std::bit_width(num_pages) - 1];
}

void IovaGapTree::CountOut(uint64_t num_pages) {
  --range_count_;
  free_pages_ -= num_pages;
  --histogram_[std::bit_width(num_pages) - 1];
}

void IovaGapTree::SetRange(uint32_t x, uint64_t lo, uint64_t hi) {
  Node& n = nodes_[x];
  CountOut(n.hi - n.lo + 1);
  n.lo = lo;
  n.hi = hi;
  CountIn(hi - lo + 1);
  FixUpward(x);
}

void IovaGapTree::Insert(uint64_t lo, uint64_t hi) {
  uint32_t parent = kNil;
  uint32_t* link = &root_;
  while (*link != kNil) {
    parent = *link;
    assert(hi < nodes_[parent].lo || lo > nodes_[parent].hi);
    link = lo < nodes_[parent].lo ? &nodes_[parent].left : &nodes_[parent].right;
  }
  // NewNode may grow nodes_, so resolve the link after it.
  const bool go_left = parent != kNil && lo < nodes_[parent].lo;
  const uint32_t x = NewNode(lo, hi);
  if (parent == kNil) {
    root_ = x;
  } else if (go_left) {
    nodes_[parent].left = x;
  } else {
    nodes_[parent].right = x;
  }
  nodes_[x].parent = parent;
  CountIn(hi - lo + 1);
  FixUpward(parent);
}

void IovaGapTree::Erase(uint32_t x) {
  Node& n = nodes_[x];
  CountOut(n.hi - n.lo + 1);
  if (n.left != kNil && n.right != kNil) {
    // Move the in-order successor's range into x, then unlink the successor
    // (which has no left child).
    const uint32_t s = Leftmost(n.right);
    n.lo = nodes_[s].lo;
    n.hi = nodes_[s].hi;
    const uint32_t p = nodes_[s].parent;
    ReplaceChild(p, s, nodes_[s].right);
    FreeNode(s);
    FixUpward(p);
    FixUpward(x);  // x's own range changed; the first pass may have stopped below it
    return;
  }
  const uint32_t child = n.left != kNil ? n.left : n.right;
  const uint32_t p = n.parent;
  ReplaceChild(p, x, child);
  FreeNode(x);
  FixUpward(p);
}

uint32_t IovaGapTree::Leftmost(uint32_t x) const {
  if (x == kNil) return kNil;
  while (nodes_[x].left != kNil) x = nodes_[x].left;
  return x;
}

uint32_t IovaGapTree::Next(uint32_t x) const {
  if (nodes_[x].right != kNil) return Leftmost(nodes_[x].right);
  uint32_t p = nodes_[x].parent;
  while (p != kNil && nodes_[p].right == x) {
    x = p;
    p = nodes_[p].parent;
  }
  return p;
}

uint32_t IovaGapTree::Floor(uint64_t pfn) const {
  uint32_t best = kNil;
  uint32_t x = root_;
  while (x != kNil) {
    if (nodes_[x].lo <= pfn) {
      best = x;
      x = nodes_[x].right;
    } else {
      x = nodes_[x].left;
    }
  }
  return best;
}

IovaGapTree::Fit IovaGapTree::DescendHighest(uint32_t x, uint64_t num_pages,
                                             int order) const {
  const uint64_t align = uint64_t{1} << order;
  for (;;) {
    assert(x != kNil && Aug(x, order) >= num_pages);
    const Node& n = nodes_[x];
    if (Aug(n.right, order) >= num_pages) {
      x = n.right;
    } else if (Room(n.lo, n.hi, order) >= num_pages) {
      return Fit{x, AlignDown(n.hi - num_pages + 1, align)};
    } else {
      x = n.left;
    }
  }
}

IovaGapTree::Fit IovaGapTree::FindHighestFit(uint64_t num_pages, int order,
                                             uint64_t limit_pfn) const {
  assert(num_pages >= 1 && order < num_orders_ && (uint64_t{1} << order) >= num_pages);
  if (Aug(root_, order) < num_pages) return Fit{};
  // Nodes on limit_pfn's search path at which the search went right, i.e.
  // with lo <= limit_pfn. Deeper ones lie higher; each one's left subtree lies
  // between it and the previous one, entirely below the limit.
  uint32_t path[128];
  int depth = 0;
  for (uint32_t x = root_; x != kNil;) {
    if (nodes_[x].lo <= limit_pfn) {
      assert(depth < 128);
      path[depth++] = x;
      x = nodes_[x].right;
    } else {
      x = nodes_[x].left;
    }
  }
  const uint64_t align = uint64_t{1} << order;
  while (depth > 0) {
    const uint32_t x = path[--depth];
    const Node& n = nodes_[x];
    const uint64_t hi = std::min(n.hi, limit_pfn);
    if (hi - n.lo + 1 >= num_pages) {
      const uint64_t pfn = AlignDown(hi - num_pages + 1, align);
      if (pfn >= n.lo) return Fit{x, pfn};
    }
    if (Aug(n.left, order) >= num_pages) return DescendHighest(n.left, num_pages, order);
  }
  return Fit{};
}

void IovaGapTree::Carve(const Fit& fit, uint64_t num_pages) {
  const uint32_t x = fit.node;
  const uint64_t lo = nodes_[x].lo;
  const uint64_t hi = nodes_[x].hi;
  const uint64_t last = fit.pfn + num_pages - 1;
  assert(fit.pfn >= lo && last <= hi && last >= fit.pfn);
  if (fit.pfn == lo && last == hi) {
    Erase(x);
  } else if (fit.pfn == lo) {
    SetRange(x, last + 1, hi);
  } else if (last == hi) {
    SetRange(x, lo, fit.pfn - 1);
  } else {
    SetRange(x, lo, fit.pfn - 1);
    Insert(last + 1, hi);
  }
}

void IovaGapTree::Release(uint64_t lo, uint64_t hi) {
  assert(lo <= hi);
  const uint32_t pred = Floor(lo);
  assert(pred == kNil || nodes_[pred].hi < lo);
  const bool merge_pred = pred != kNil && nodes_[pred].hi + 1 == lo;
  uint32_t succ = hi == UINT64_MAX ? kNil : Floor(hi + 1);
  const bool merge_succ = succ != kNil && nodes_[succ].lo == hi + 1;
  if (merge_pred && merge_succ) {
    const uint64_t new_hi = nodes_[succ].hi;
    Erase(succ);  // only touches succ and nodes above pred in order
    SetRange(pred, nodes_[pred].lo, new_hi);
  } else if (merge_pred) {
    SetRange(pred, nodes_[pred].lo, hi);
  } else if (merge_succ) {
    SetRange(succ, lo, nodes_[succ].hi);
  } else {
    Insert(lo, hi);
  }
}

void IovaGapTree::Take(uint64_t lo, uint64_t hi) {
  const uint32_t x = Floor(lo);
  assert(x != kNil && nodes_[x].hi >= hi);
  Carve(Fit{x, lo}, hi - lo + 1);
}

uint64_t IovaGapTree::FreePagesIn(uint64_t lo, uint64_t hi) const {
  uint64_t pages = 0;
  uint32_t x = Floor(lo);
  if (x == kNil) x = Leftmost(root_);
  for (; x != kNil && nodes_[x].lo <= hi; x = Next(x)) {
    const uint64_t a = std::max(lo, nodes_[x].lo);
    const uint64_t b = std::min(hi, nodes_[x].hi);
    if (a <= b) pages += b - a + 1;
  }
  return pages;
}

bool IovaGapTree::FindContaining(uint64_t pfn, Range* out) const {
  const uint32_t x = Floor(pfn);
  if (x == kNil || nodes_[x].hi < pfn) return false;
  *out = Range{nodes_[x].lo, nodes_[x].hi};
  return true;
}

absl::Status IovaGapTree::CheckSubtree(uint32_t x, uint32_t parent, int* height,
                                       std::vector<uint64_t>* aug_out) const {
  aug_out->assign(num_orders_, 0);
  if (x == kNil) {
    *height = 0;
    return absl::OkStatus();
  }
  const Node& n = nodes_[x];
  if (n.parent != parent) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: parent link %u, want %u",
                                               x, n.parent, parent));
  }
  if (n.lo > n.hi) {
    return absl::InternalError(absl::StrFormat("gap tree node %u: empty range", x));
  }
  int hl = 0;
  int hr = 0;
  std::vector<uint64_t> al;
  std::vector<uint64_t> ar;
  if (absl::Status s = CheckSubtree(n.left, x, &hl, &al); !s.ok()) return s;
  if (absl::Status s = CheckSubtree(n.right, x, &hr, &ar); !s.ok()) return s;
  if (hl - hr > 1 || hr - hl > 1 || n.height != 1 + std::max(hl, hr)) {
    return absl::InternalError(absl::StrFormat(
        "gap tree node %u: height %d with children %d/%d", x, n.height, hl, hr));
  }
  *height = n.height;
  for (int k = 0; k < num_orders_; ++k) {
    (*aug_out)[k] = std::max(Room(n.lo, n.hi, k), std::max(al[k], ar[k]));
    if ((*aug_out)[k] != Aug(x, k)) {
      return absl::InternalError(absl::StrFormat(
          "gap tree node %u [%#x, %#x]: aug[%d]=%#x, recount %#x", x, n.lo, n.hi, k,
          Aug(x, k), (*aug_out)[k]));
    }
  }
  return absl::OkStatus();
}

absl::Status IovaGapTree::CheckInvariants() const {
  for (int k = 0; k < num_orders_; ++k) {
    if (AugRow(kNil)[k] != 0) return absl::InternalError("gap tree: nil aug row not zero");
  }
  int height = 0;
  std::vector<uint64_t> aug;
  if (absl::Status s = CheckSubtree(root_, kNil, &height, &aug); !s.ok()) return s;
  uint64_t count = 0;
  uint64_t pages = 0;
  uint64_t hist[kHistogramBuckets] = {};
  bool have_prev = false;
  uint64_t prev_hi = 0;
  for (uint32_t x = Leftmost(root_); x != kNil; x = Next(x)) {
    const Node& n = nodes_[x];
    if (have_prev && n.lo <= prev_hi + 1) {
      return absl::InternalError(absl::StrFormat(
          "gap tree: range [%#x, %#x] overlaps or touches previous ending %#x", n.lo, n.hi,
          prev_hi));
    }
    have_prev = true;
    prev_hi = n.hi;
    ++count;
    pages += n.hi - n.lo + 1;
    ++hist[std::bit_width(n.hi - n.lo + 1) - 1];
  }
  if (count != range_count_ || pages != free_pages_) {
    return absl::InternalError(absl::StrFormat(
        "gap tree: counted %u ranges/%#x pages, tracked %u/%#x", count, pages,
        range_count_, free_pages_));
  }
  for (int b = 0; b < kHistogramBuckets; ++b) {
    if (hist[b] != histogram_[b]) {
      return absl::InternalError(absl::StrFormat(
          "gap tree: histogram bucket %d counts %u, tracked %u", b, hist[b], histogram_[b]));
    }
  }
  if (count + 1 + free_nodes_.size() != nodes_.size()) {
    return absl::InternalError("gap tree: slab leaks nodes");
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
