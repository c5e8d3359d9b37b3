#include "dispatch.h"

#include <atomic>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace tritlm::kernels {

#if !(defined(__x86_64__) || defined(_M_X64))
const KernelTable* avx2_table() { return nullptr; }
const KernelTable* avx512vnni_table() { return nullptr; }
#endif
#if !defined(__aarch64__)
const KernelTable* neon_table() { return nullptr; }
const KernelTable* neon_dotprod_table() { return nullptr; }
#endif

namespace {

struct Features {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false, avx512vl = false;
  bool avx512_vnni = false, avx_vnni = false;
  bool neon = false, dotprod = false;
};

Features detect() {
  Features f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & bit_OSXSAVE;
  f.fma = c & bit_FMA;
  f.f16c = c & bit_F16C;
  bool ymm_enabled = false, zmm_enabled = false;
  if (osxsave) {
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    ymm_enabled = (lo & 0x6) == 0x6;    // XMM and YMM state saved by the OS
    zmm_enabled = (lo & 0xe6) == 0xe6;  // and the AVX-512 state
  }
  if (ymm_enabled && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & bit_AVX2;
    f.avx512f = zmm_enabled && (b & bit_AVX512F);
    f.avx512bw = zmm_enabled && (b & bit_AVX512BW);
    f.avx512vl = zmm_enabled && (b & bit_AVX512VL);
    f.avx512_vnni = zmm_enabled && (c & bit_AVX512VNNI);
  }
  if (ymm_enabled && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx_vnni = a & (1u << 4);
  f.fma = f.fma && ymm_enabled;
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory in AArch64
#if defined(__linux__)
  f.dotprod = getauxval(AT_HWCAP) & (1ul << 20);  // HWCAP_ASIMDDP
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof value;
  f.dotprod = sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value;
#endif
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

std::atomic<const KernelTable*> g_active{nullptr};

}  // namespace

std::vector<std::string> cpu_features() {
  const Features& f = features();
  std::vector<std::string> out;
  const std::pair<bool, const char*> named[] = {
      {f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.avx512f, "avx512f"}, {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"},
      {f.avx512_vnni, "avx512_vnni"}, {f.avx_vnni, "avx_vnni"}, {f.neon, "neon"}, {f.dotprod, "dotprod"}};
  for (const auto& [present, name] : named)
    if (present) out.emplace_back(name);
  return out;
}

std::vector<const KernelTable*> available_tables() {
  const Features& f = features();
  std::vector<const KernelTable*> out{&kScalarTable};
  if (f.avx2 && f.fma && f.f16c && avx2_table()) out.push_back(avx2_table());
  if (f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni && avx512vnni_table())
    out.push_back(avx512vnni_table());
  if (f.neon && neon_table()) out.push_back(neon_table());
  if (f.dotprod && neon_dotprod_table()) out.push_back(neon_dotprod_table());
  return out;
}

const KernelTable& table_named(const std::string& isa) {
  std::string choices;
  for (const KernelTable* t : available_tables()) {
    if (isa == t->isa) return *t;
    choices += choices.empty() ? "" : ", ";
    choices += t->isa;
  }
  throw std::invalid_argument("kernel ISA '" + isa + "' is not available on this CPU and build; choose one of: " +
                              choices);
}

const KernelTable& active_table() {
  // The default is looked up once: the forward pass asks for the table at every linear, KV store
  // and attention (170 times a Bonsai-1.7B token), and available_tables() builds a vector.
  static const KernelTable* const best = available_tables().back();
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  return t ? *t : *best;
}

void set_active_table(const std::string& isa) { g_active.store(&table_named(isa), std::memory_order_release); }

}  // namespace tritlm::kernels
