// The out-of-line part of zerocan/internal/wire_view.h.
#include "zerocan/internal/wire_view.h"

namespace zerocan::internal::view_detail {

// Far pointer `w`: landing pad of one word (a normal pointer) or two (a far pointer to
// the content's start, then the tag).
Target ResolveFar(const Segments& segs, uint64_t w) {
  bool two_words = (w >> 2) & 1;
  uint64_t pad_at = static_cast<uint32_t>(w) >> 3;
  uint64_t pad_segment = w >> 32;
  if (pad_segment >= segs.count) ViewFail();
  const Segments::Segment& ps = segs.list[pad_segment];
  if (pad_at + (two_words ? 2 : 1) > ps.words) ViewFail();
  uint64_t pad = Load(ps.begin + pad_at);
  if (!two_words) {
    if ((pad & 3) == 2) ViewFail();
    return Target{pad, static_cast<uint32_t>(pad_segment), static_cast<int64_t>(pad_at) + 1 + PointerOffset(pad)};
  }
  if ((pad & 7) != 2) ViewFail();  // a single far pointer to the content
  uint64_t content_segment = pad >> 32;
  if (content_segment >= segs.count) ViewFail();
  uint64_t tag = Load(ps.begin + pad_at + 1);
  if ((tag & 3) == 2) ViewFail();
  return Target{tag, static_cast<uint32_t>(content_segment), static_cast<int64_t>(static_cast<uint32_t>(pad) >> 3)};
}

}  // namespace zerocan::internal::view_detail
