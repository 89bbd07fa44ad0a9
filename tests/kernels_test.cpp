// kernels/ under the host compiler: the same bodies the GPU plugins launch
// (page_gather.hpp through launch.hpp) and the cpu backend calls
// (page_copy.hpp), plus device_span over a DevicePageTable.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "uhmm/device_span.hpp"
#include "uhmm/launch.hpp"
#include "uhmm/page_copy.hpp"
#include "uhmm/page_gather.hpp"

namespace {

using namespace uhmm;
constexpr std::size_t kPage = kernels::kCopyPageBytes;
constexpr std::size_t kWords = kPage / 8;

// Page-aligned pages whose word w of page p holds seed + p * kWords + w.
struct Pages {
  explicit Pages(std::size_t count, std::uint64_t seed) : n(count) {
    mem = static_cast<std::uint64_t*>(std::aligned_alloc(kPage, n * kPage));
    for (std::size_t i = 0; i < n * kWords; ++i) mem[i] = seed + i;
  }
  ~Pages() { std::free(mem); }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
  std::uint64_t address(std::size_t page) const { return reinterpret_cast<std::uintptr_t>(mem + page * kWords); }
  std::uint64_t word(std::size_t page, std::size_t w) const { return mem[page * kWords + w]; }
  std::size_t n;
  std::uint64_t* mem;
};

TEST(Kernels, LaunchRunsEveryIndexOnce) {
  std::vector<int> hits(1000, 0);
  struct Count {
    int* hits;
    void operator()(std::size_t i) const { ++hits[i]; }
  };
  launch(HostStream{}, hits.size(), Count{hits.data()});
  for (std::size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << i;
  launch(HostStream{}, 0, Count{nullptr});  // an empty index space runs nothing
}

TEST(Kernels, CopyPageSplitInLanesCopiesTheWholePageOnce) {
  Pages src(1, 100), dst(1, 0);
  for (std::size_t lane = 0; lane < 3; ++lane) kernels::copy_page(dst.address(0), src.address(0), lane, 3);
  for (std::size_t w = 0; w < kWords; ++w) ASSERT_EQ(dst.word(0, w), src.word(0, w)) << w;
}

TEST(Kernels, GatherScatterCopiesAndZeroesAScatteredPageListInOneLaunch) {
  Pages src(8, 1000), dst(8, 5);
  kernels::GatherScatterPages body{};
  // dst page 0 <- src 7, dst 2 <- src 3, dst 5 zeroed, dst 6 <- src 0; others untouched.
  const std::size_t to[] = {0, 2, 5, 6};
  const std::size_t from[] = {7, 3, 0, 0};
  const bool zero[] = {false, false, true, false};
  for (std::size_t k = 0; k < 4; ++k) {
    body.list.dst[k] = dst.address(to[k]);
    body.list.src[k] = zero[k] ? 0 : src.address(from[k]);
  }
  body.list.count = 4;
  ASSERT_EQ(body.size(), 4 * kWords);
  launch(HostStream{}, body.size(), body);

  Pages untouched(8, 5);
  for (std::size_t k = 0; k < 4; ++k)
    for (std::size_t w = 0; w < kWords; ++w)
      ASSERT_EQ(dst.word(to[k], w), zero[k] ? 0 : src.word(from[k], w)) << "page " << to[k] << " word " << w;
  for (const std::size_t p : {1, 3, 4, 7})
    for (std::size_t w = 0; w < kWords; ++w) ASSERT_EQ(dst.word(p, w), untouched.word(p, w)) << p << " " << w;
}

TEST(Kernels, PageListFitsTheKernelParameterLimit) {
  // CUDA and HIP both guarantee 4 KiB of kernel parameters.
  static_assert(sizeof(kernels::GatherScatterPages) <= 4096);
  EXPECT_LE(sizeof(kernels::GatherScatterPages), 4096u);
}

TEST(Kernels, DeviceSpanFollowsThePageTableAcrossPagesFromAnOffset) {
  Pages pages(3, 0);
  // The span starts 64 bytes into its first page; its pages are scattered (2, 0, 1).
  const std::uint64_t table_pages[] = {pages.address(2), pages.address(0), pages.address(1)};
  const DevicePageTable table{table_pages, 3, 64, 3 * kPage - 64};
  device_span<std::uint64_t> span(table);
  ASSERT_EQ(span.size(), (3 * kPage - 64) / 8);
  EXPECT_EQ(span[0], pages.word(2, 8));
  EXPECT_EQ(span[kWords - 9], pages.word(2, kWords - 1));
  EXPECT_EQ(span[kWords - 8], pages.word(0, 0));
  span[2 * kWords - 8] = 42;
  EXPECT_EQ(pages.word(1, 0), 42u);
}

TEST(Kernels, DeviceSpanOnANonResidentPageFaultsWithItsOffset) {
  Pages pages(1, 0);
  const std::uint64_t table_pages[] = {pages.address(0), 0};
  const DevicePageTable table{table_pages, 2, 0, 2 * kPage};
  device_span<std::uint32_t> span(table);
  EXPECT_EQ(span[2], static_cast<std::uint32_t>(pages.word(0, 1)));  // low half, little-endian
  try {
    (void)span[kPage / 4 + 5];
    ADD_FAILURE() << "no fault";
  } catch (const DeviceFaultException& e) {
    EXPECT_EQ(e.byte_offset, kPage + 20);
  }
}

}  // namespace
