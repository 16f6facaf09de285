// SPDX-License-Identifier: Apache-2.0
// Leaf attribute encoding and decoding for the LPAE format (Linux's
// arm_lpae_prot_to_pte and its inverse).

#include "core/pgtable/io_pgtable.h"
#include "core/pgtable/lpae_format.h"
#include "core/pgtable/lpae_pgtable.h"

namespace iommu::core::lpae {

// Stage 1: nG always (translations are ASID-tagged), AF set (no access-flag
// faults), AP[2] read-only unless WRITE (AP cannot express write-only, so
// WRITE alone maps read-write, as Linux), AP[1] unprivileged access unless
// PRIV, AttrIndx device / cacheable / non-cacheable, inner shareable for
// cacheable memory and outer shareable otherwise, UXN+PXN for NOEXEC.
// Stage 2: S2AP read/write as asked, MemAttr device / write-back /
// non-cacheable, same shareability, XN for NOEXEC (privilege is a stage-1
// notion: PRIV has no stage-2 encoding).
uint64_t ProtToLeafAttrs(Stage stage, uint32_t quirks, Prot prot) {
  const bool mmio = Has(prot, Prot::kMmio);
  const bool cache = Has(prot, Prot::kCache) && !mmio;
  uint64_t pte = kPteAf | (cache ? kPteShIs : kPteShOs);
  if (stage == Stage::kStage1) {
    pte |= kPteNg;
    if (!Has(prot, Prot::kWrite)) pte |= kPteApRdonly;
    if (!Has(prot, Prot::kPriv)) pte |= kPteApUnpriv;
    pte |= AttrIndx(mmio ? kMairIdxDev : cache ? kMairIdxCache : kMairIdxNc);
    if (Has(prot, Prot::kNoExec)) pte |= kPteXn | kPtePxn;
    if (quirks & kQuirkArmNs) pte |= kPteNs;
  } else {
    if (Has(prot, Prot::kRead)) pte |= kPteS2ApRead;
    if (Has(prot, Prot::kWrite)) pte |= kPteS2ApWrite;
    pte |= mmio ? kPteS2MemAttrDev : cache ? kPteS2MemAttrOiwb : kPteS2MemAttrNc;
    if (Has(prot, Prot::kNoExec)) pte |= kPteS2Xn;
  }
  return pte;
}

// Stage 1, AP[2:1]: 00 priv RW, 01 RW at both, 10 priv RO, 11 RO at both.
// Execution is granted at a privilege level that may read and whose XN bit
// (UXN unprivileged, PXN privileged) is clear; a location writable
// unprivileged is never privileged-executable (the architecture's implicit
// PXN). Stage 2 has no privilege distinction: S2AP and XN apply to both.
Grant DecodeGrant(Stage stage, uint64_t pte) {
  uint8_t bits = 0;
  if (stage == Stage::kStage1) {
    const bool ro = pte & kPteApRdonly;
    const bool unpriv = pte & kPteApUnpriv;
    bits |= Grant::kReadPriv;
    if (!ro) bits |= Grant::kWritePriv;
    if (unpriv) {
      bits |= Grant::kReadUnpriv;
      if (!ro) bits |= Grant::kWriteUnpriv;
      if (!(pte & kPteXn)) bits |= Grant::kExecUnpriv;
    }
    if (!(pte & kPtePxn) && !(unpriv && !ro)) bits |= Grant::kExecPriv;
  } else {
    const bool read = pte & kPteS2ApRead;
    if (read) bits |= Grant::kReadUnpriv | Grant::kReadPriv;
    if (pte & kPteS2ApWrite) bits |= Grant::kWriteUnpriv | Grant::kWritePriv;
    if (read && !(pte & kPteS2Xn)) bits |= Grant::kExecUnpriv | Grant::kExecPriv;
  }
  return Grant(bits);
}

Prot DecodeProt(Stage stage, uint64_t pte) {
  Prot prot = Prot::kNone;
  if (stage == Stage::kStage1) {
    prot = prot | Prot::kRead;
    if (!(pte & kPteApRdonly)) prot = prot | Prot::kWrite;
    if (!(pte & kPteApUnpriv)) prot = prot | Prot::kPriv;
    if (pte & kPteXn) prot = prot | Prot::kNoExec;
    const uint64_t idx = (pte & kPteAttrIndxMask) >> kPteAttrIndxShift;
    if (idx == kMairIdxDev) prot = prot | Prot::kMmio;
    if (idx == kMairIdxCache) prot = prot | Prot::kCache;
  } else {
    if (pte & kPteS2ApRead) prot = prot | Prot::kRead;
    if (pte & kPteS2ApWrite) prot = prot | Prot::kWrite;
    if (pte & kPteS2Xn) prot = prot | Prot::kNoExec;
    const uint64_t attr = pte & kPteS2MemAttrMask;
    if (attr == kPteS2MemAttrDev) prot = prot | Prot::kMmio;
    if (attr == kPteS2MemAttrOiwb) prot = prot | Prot::kCache;
  }
  return prot;
}

LeafAttrs DecodeAttrs(Stage stage, uint64_t pte) {
  LeafAttrs a;
  switch ((pte & kPteShMask) >> kPteShShift) {
    case 3:
      a.shareability = Shareability::kInner;
      break;
    case 2:
      a.shareability = Shareability::kOuter;
      break;
    default:
      a.shareability = Shareability::kNonShareable;
      break;
  }
  a.access_flag = pte & kPteAf;
  if (stage == Stage::kStage1) {
    a.not_global = pte & kPteNg;
    a.non_secure = pte & kPteNs;
    const uint64_t idx = (pte & kPteAttrIndxMask) >> kPteAttrIndxShift;
    a.mem_type = idx == kMairIdxDev     ? MemType::kDevice
                 : idx == kMairIdxCache ? MemType::kNormalCacheable
                                        : MemType::kNormalNonCacheable;
  } else {
    const uint64_t attr = pte & kPteS2MemAttrMask;
    a.mem_type = attr == kPteS2MemAttrDev    ? MemType::kDevice
                 : attr == kPteS2MemAttrOiwb ? MemType::kNormalCacheable
                                             : MemType::kNormalNonCacheable;
  }
  return a;
}

}  // namespace iommu::core::lpae
