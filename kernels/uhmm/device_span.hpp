// The device page table of one span of managed memory, and device_span<T>,
// which a kernel uses to reach element i through it. Written once for CUDA,
// HIP and host code (the cpu backend runs the same source).
#pragma once

#include <cstddef>
#include <cstdint>

#include "uhmm/kernel_config.hpp"

namespace uhmm {

// One entry per 4 KiB page of the span: the page's device address, or 0 when
// the page is not resident on this device.
struct DevicePageTable {
  const std::uint64_t* pages = nullptr;
  std::size_t npages = 0;
  std::size_t first_offset = 0;  // byte offset of element 0 inside pages[0]
  std::size_t bytes = 0;         // bytes the span covers
  // The launch's fault word and scratch page (device memory): in GPU kernel
  // code an access to a page the table lacks records 1 + its byte offset
  // there and reaches the scratch page instead of trapping (a trap is a
  // sticky error that loses the device's every page); the host reads the
  // word after the drain. Null, or host-compiled kernels (the cpu backend):
  // the access faults at once.
  std::uint64_t* fault = nullptr;
  void* scratch = nullptr;
};

#if !UHMM_IN_DEVICE_CODE
// Host side of a device fault: the cpu backend's launcher catches it and fails
// the launch with Errc::device_fault, as a GPU would fail a kernel.
struct DeviceFaultException {
  std::size_t byte_offset;  // offset in the span of the faulting access
};
#endif

// Element i is read whole from the page its first byte is in: launches refuse
// a span that does not start at a multiple of sizeof(T) inside its page, so
// that no element straddles two pages (host/api/launch.cpp).
template <class T>
class device_span {
  static_assert(4096 % sizeof(T) == 0, "device_span elements must not straddle pages");

 public:
  using element_type = T;
  UHMM_HOST_DEVICE explicit device_span(const DevicePageTable& table) : table_(table) {}

  UHMM_HOST_DEVICE std::size_t size() const { return table_.bytes / sizeof(T); }
  // The page table it reads (in device memory inside a launch_device callback).
  UHMM_HOST_DEVICE const DevicePageTable& table() const { return table_; }

  UHMM_HOST_DEVICE T& operator[](std::size_t i) const {
    const std::size_t byte = table_.first_offset + i * sizeof(T);
    const std::size_t page = byte >> 12;
    const std::uint64_t base =
        page < table_.npages
            ? *reinterpret_cast<const std::uint64_t*>(UHMM_DEVICE_ADDRESS(reinterpret_cast<std::uintptr_t>(table_.pages + page)))
            : 0;
    if (base == 0) return miss(i * sizeof(T));
    return *reinterpret_cast<T*>(UHMM_DEVICE_ADDRESS(static_cast<std::uintptr_t>(base + (byte & 4095))));
  }

 private:
  UHMM_HOST_DEVICE T& miss(std::size_t byte_offset) const {
#if UHMM_GPU_KERNEL_CODE
    if (table_.fault != nullptr) {
      record_fault(table_.fault, byte_offset + 1);
      return *reinterpret_cast<T*>(UHMM_DEVICE_ADDRESS(reinterpret_cast<std::uintptr_t>(table_.scratch)));
    }
#endif
    fault(byte_offset);
    return *reinterpret_cast<T*>(UHMM_DEVICE_ADDRESS(reinterpret_cast<std::uintptr_t>(table_.scratch)));  // not reached
  }
  // The first miss wins; the word is 0 until then.
  UHMM_HOST_DEVICE static void record_fault(std::uint64_t* word, std::uint64_t value) {
#if UHMM_IN_DEVICE_CODE && defined(__HIP_DEVICE_COMPILE__)
    // clang's builtin: hipcc need not have declared atomicCAS at this point.
    std::uint64_t expected = 0;
    __atomic_compare_exchange_n(word, &expected, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
#elif UHMM_IN_DEVICE_CODE
    atomicCAS(reinterpret_cast<unsigned long long*>(word), 0ull, static_cast<unsigned long long>(value));
#else
    std::uint64_t expected = 0;
    __atomic_compare_exchange_n(
        reinterpret_cast<std::uint64_t*>(UHMM_DEVICE_ADDRESS(reinterpret_cast<std::uintptr_t>(word))), &expected,
        value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
#endif
  }
  UHMM_HOST_DEVICE static void fault([[maybe_unused]] std::size_t byte_offset) {
#if UHMM_IN_DEVICE_CODE && defined(__HIP_DEVICE_COMPILE__)
    __builtin_trap();  // HIP has no __trap; the kernel aborts the same way
#elif UHMM_IN_DEVICE_CODE
    __trap();
#else
    throw DeviceFaultException{byte_offset};
#endif
  }

  DevicePageTable table_;
};

}  // namespace uhmm
