// The cpu backend behaves like a device: separate memory, ordered asynchronous
// streams, events, injected failures, kernels whose faults are caught.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../../driver/cpu/cpu_backend.hpp"
#include "uhmm/device_span.hpp"

namespace uhmm::detail {
namespace {

std::uint64_t addr(const void* p) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)); }
std::uint64_t* words(DeviceAddress a) { return reinterpret_cast<std::uint64_t*>(static_cast<std::uintptr_t>(a)); }
constexpr std::size_t kWords = kPageSize / 8;

// Page-aligned host pages from the backend's own allocate_host.
class HostPages {
 public:
  HostPages(Backend& backend, std::size_t pages) : backend_(backend), pages_(pages) {
    void* p = nullptr;
    const Status s = backend.allocate_host(pages * kPageSize, &p);
    EXPECT_TRUE(s) << s.message;
    base_ = static_cast<std::uint64_t*>(p);
  }
  ~HostPages() { backend_.free_host(base_); }
  HostPages(const HostPages&) = delete;
  HostPages& operator=(const HostPages&) = delete;
  std::uint64_t* page(std::size_t i) const { return base_ + i * kWords; }
  void fill(std::size_t i, std::uint64_t seed) const {
    for (std::size_t w = 0; w < kWords; ++w) page(i)[w] = seed * 1'000'003 + w;
  }

 private:
  Backend& backend_;
  std::size_t pages_;
  std::uint64_t* base_ = nullptr;
};

bool page_has(const std::uint64_t* p, std::uint64_t seed) {
  for (std::size_t w = 0; w < kWords; ++w)
    if (p[w] != seed * 1'000'003 + w) return false;
  return true;
}
bool page_is_zero(const std::uint64_t* p) {
  for (std::size_t w = 0; w < kWords; ++w)
    if (p[w] != 0) return false;
  return true;
}

class CpuBackendTest : public ::testing::Test {
 protected:
  CpuBackendTest() : backend_(std::uint64_t{8} * kChunkSize) {
    EXPECT_TRUE(backend_.allocate_chunk(&chunk_));
    EXPECT_TRUE(backend_.create_stream(&stream_));
  }
  ~CpuBackendTest() override {
    backend_.destroy_stream(stream_);
    backend_.free_chunk(chunk_);
  }
  DeviceAddress dev(std::size_t page) const { return chunk_ + page * kPageSize; }

  CpuBackend backend_;
  DeviceAddress chunk_ = 0;
  StreamId stream_ = 0;
};

TEST_F(CpuBackendTest, InfoAdvertisesHostKernelsHostVisibleMemoryAndPeerCopy) {
  const DeviceInfo info = backend_.info();
  EXPECT_EQ(info.backend, "cpu");
  EXPECT_EQ(info.memory_bytes, 8 * kChunkSize);
  EXPECT_EQ(info.capabilities, kCapHostKernels | kCapHostVisibleMemory | kCapPeerCopy | kCapHostMemoryAccess);
}

TEST(CpuBackendMemory, ChunksAreAlignedDistinctAndOutOfMemoryWhenCapacityIsUsed) {
  CpuBackend backend(3 * kChunkSize);
  std::vector<DeviceAddress> chunks(3);
  for (auto& c : chunks) {
    ASSERT_TRUE(backend.allocate_chunk(&c));
    EXPECT_EQ(c % kChunkSize, 0u);
  }
  EXPECT_NE(chunks[0], chunks[1]);
  EXPECT_NE(chunks[1], chunks[2]);
  DeviceAddress extra = 0;
  const Status full = backend.allocate_chunk(&extra);
  EXPECT_EQ(full.code, Errc::out_of_memory);
  EXPECT_NE(full.message.find("exhausted"), std::string::npos) << full.message;
  backend.free_chunk(chunks[1]);
  ASSERT_TRUE(backend.allocate_chunk(&extra));
  EXPECT_EQ(extra, chunks[1]);
  EXPECT_EQ(backend.chunks_in_use(), 3u);
  for (auto c : {chunks[0], extra, chunks[2]}) backend.free_chunk(c);
  EXPECT_EQ(backend.chunks_in_use(), 0u);
}

TEST(CpuBackendMemory, DeviceMemoryIsWritableAndCapacityIsRoundedUpToChunks) {
  CpuBackend backend(kChunkSize + 1);
  EXPECT_EQ(backend.info().memory_bytes, 2 * kChunkSize);
  DeviceAddress c = 0;
  ASSERT_TRUE(backend.allocate_chunk(&c));
  std::memset(words(c), 0xab, kChunkSize);
  EXPECT_EQ(words(c)[kChunkSize / 8 - 1], 0xababababababababull);
  backend.free_chunk(c);
}

TEST(CpuBackendMemory, ZeroCapacityDeviceFailsEveryChunkWithOutOfMemory) {
  CpuBackend backend(0);
  DeviceAddress c = 0;
  EXPECT_EQ(backend.allocate_chunk(&c).code, Errc::out_of_memory);
}

TEST(CpuBackendMemory, HostAllocationsArePageAlignedAndZeroBytesIsRefused) {
  CpuBackend backend(kChunkSize);
  void* p = nullptr;
  ASSERT_TRUE(backend.allocate_host(100, &p));
  EXPECT_EQ(addr(p) % kPageSize, 0u);
  static_cast<char*>(p)[kPageSize - 1] = 1;
  backend.free_host(p);
  EXPECT_EQ(backend.allocate_host(0, &p).code, Errc::zero_length);
  EXPECT_EQ(backend.allocate_host(10, nullptr).code, Errc::invalid_argument);
}

TEST_F(CpuBackendTest, HostToDeviceAndBackCopiesEveryPageExactly) {
  HostPages in(backend_, 8), out(backend_, 8);
  std::vector<HostToDevicePage> h2d;
  std::vector<DeviceToHostPage> d2h;
  for (std::size_t i = 0; i < 8; ++i) {
    in.fill(i, i + 1);
    h2d.push_back({in.page(i), dev(7 - i)});  // reversed: descriptors, not layout, decide
    d2h.push_back({dev(7 - i), out.page(i)});
  }
  BatchResult r1, r2;
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, &r1));
  ASSERT_TRUE(backend_.copy_to_host(stream_, d2h, &r2));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(r1.status);
  EXPECT_EQ(r1.pages_done, 8u);
  EXPECT_EQ(r2.pages_done, 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_TRUE(page_has(words(dev(7 - i)), i + 1)) << i;
    EXPECT_TRUE(page_has(out.page(i), i + 1)) << i;
  }
}

TEST_F(CpuBackendTest, DeviceToDeviceCopiesWithinAndAcrossDevices) {
  HostPages in(backend_, 1), out(backend_, 1);
  in.fill(0, 42);
  CpuBackend peer(kChunkSize);
  DeviceAddress peer_chunk = 0;
  ASSERT_TRUE(peer.allocate_chunk(&peer_chunk));
  const HostToDevicePage h2d[] = {{in.page(0), dev(0)}};
  const DeviceToDevicePage local[] = {{dev(0), dev(1)}};
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, nullptr));
  ASSERT_TRUE(backend_.copy_device_to_device(stream_, local, nullptr));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(page_has(words(dev(1)), 42));

  StreamId peer_stream = 0;
  ASSERT_TRUE(peer.create_stream(&peer_stream));
  const DeviceToDevicePage across[] = {{dev(1), peer_chunk + kPageSize}};  // peer pulls from us
  BatchResult r;
  ASSERT_TRUE(peer.copy_device_to_device(peer_stream, across, &r));
  ASSERT_TRUE(peer.synchronize(peer_stream));
  EXPECT_EQ(r.pages_done, 1u);
  EXPECT_TRUE(page_has(words(peer_chunk + kPageSize), 42));
  peer.destroy_stream(peer_stream);
  peer.free_chunk(peer_chunk);
}

TEST_F(CpuBackendTest, ZeroFillClearsExactlyTheListedPages) {
  for (std::size_t i = 0; i < 4; ++i) std::memset(words(dev(i)), 0xff, kPageSize);
  const DeviceAddress pages[] = {dev(0), dev(2)};
  BatchResult r;
  ASSERT_TRUE(backend_.zero_device(stream_, pages, &r));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(r.pages_done, 2u);
  EXPECT_TRUE(page_is_zero(words(dev(0))));
  EXPECT_FALSE(page_is_zero(words(dev(1))));
  EXPECT_TRUE(page_is_zero(words(dev(2))));
  EXPECT_EQ(words(dev(3))[0], ~std::uint64_t{0});
}

TEST_F(CpuBackendTest, OperationsOnOneStreamRunInEnqueueOrder) {
  // Each step copies page k to page k+1 (device to device); the chain is only
  // right if every copy ran after the previous one.
  HostPages in(backend_, 1), out(backend_, 1);
  in.fill(0, 7);
  const HostToDevicePage first[] = {{in.page(0), dev(0)}};
  ASSERT_TRUE(backend_.copy_to_device(stream_, first, nullptr));
  constexpr std::size_t kSteps = 200;
  std::vector<std::uint64_t> order;
  std::mutex order_mutex;
  for (std::size_t k = 0; k < kSteps; ++k) {
    const DeviceToDevicePage step[] = {{dev(k % 511), dev((k + 1) % 511)}};
    ASSERT_TRUE(backend_.copy_device_to_device(stream_, step, nullptr));
    ASSERT_TRUE(backend_.launch(stream_, 1, [&, k](std::size_t, std::size_t) {
      std::lock_guard lock(order_mutex);
      order.push_back(k);
    }, nullptr));
  }
  const DeviceToHostPage last[] = {{dev(kSteps % 511), out.page(0)}};
  ASSERT_TRUE(backend_.copy_to_host(stream_, last, nullptr));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(page_has(out.page(0), 7));
  ASSERT_EQ(order.size(), kSteps);
  for (std::size_t k = 0; k < kSteps; ++k) EXPECT_EQ(order[k], k);
}

TEST_F(CpuBackendTest, WorkIsAsynchronousUntilSynchronize) {
  FaultInjection slow;
  slow.copy_delay_us = 200'000;
  backend_.set_fault_injection(slow);
  HostPages in(backend_, 1);
  in.fill(0, 3);
  std::memset(words(dev(0)), 0, kPageSize);
  const HostToDevicePage h2d[] = {{in.page(0), dev(0)}};
  BatchResult r{{Errc::busy, "unwritten"}, 99};
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, &r));
  // The call returned with the copy still waiting for its delay.
  std::atomic<bool> kernel_ran{false};
  ASSERT_TRUE(backend_.launch(stream_, 1, [&](std::size_t, std::size_t) { kernel_ran = true; }, nullptr));
  EXPECT_FALSE(kernel_ran.load());
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(kernel_ran.load());
  EXPECT_TRUE(r.status);
  EXPECT_EQ(r.pages_done, 1u);
  EXPECT_TRUE(page_has(words(dev(0)), 3));
}

TEST_F(CpuBackendTest, InjectedCopyFailureStopsAtPageKAndSynchronizeReportsIt) {
  constexpr std::size_t kPages = 10, kFailAt = 4;
  FaultInjection inj;
  inj.copy_fail_at_page = kFailAt;
  backend_.set_fault_injection(inj);
  HostPages in(backend_, kPages);
  std::vector<HostToDevicePage> h2d;
  for (std::size_t i = 0; i < kPages; ++i) {
    in.fill(i, 100 + i);
    std::memset(words(dev(i)), 0, kPageSize);
    h2d.push_back({in.page(i), dev(i)});
  }
  BatchResult r;
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, &r));
  const Status sync = backend_.synchronize(stream_);
  EXPECT_EQ(sync.code, Errc::device_error);
  EXPECT_EQ(sync.message, "injected copy failure at page 4");
  EXPECT_EQ(r.status.code, Errc::device_error);
  EXPECT_EQ(r.pages_done, kFailAt);
  for (std::size_t i = 0; i < kPages; ++i) {
    EXPECT_TRUE(i < kFailAt ? page_has(words(dev(i)), 100 + i) : page_is_zero(words(dev(i)))) << i;
  }
  // Reported once; the injection was used up; the stream still works.
  EXPECT_TRUE(backend_.synchronize(stream_));
  BatchResult again;
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, &again));
  EXPECT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(again.pages_done, kPages);
}

TEST_F(CpuBackendTest, InjectedCopyFailureHitsTheNextNBatchesOfAnyDirectionButNotZeroFill) {
  FaultInjection inj;
  inj.copy_fail_at_page = 0;
  inj.copy_fail_batches = 2;
  backend_.set_fault_injection(inj);
  HostPages host(backend_, 1);
  const DeviceAddress zero[] = {dev(0)};
  const DeviceToHostPage d2h[] = {{dev(0), host.page(0)}};
  const DeviceToDevicePage d2d[] = {{dev(0), dev(1)}};
  BatchResult rz, r1, r2, r3;
  ASSERT_TRUE(backend_.zero_device(stream_, zero, &rz));
  ASSERT_TRUE(backend_.copy_to_host(stream_, d2h, &r1));
  ASSERT_TRUE(backend_.copy_device_to_device(stream_, d2d, &r2));
  ASSERT_TRUE(backend_.copy_to_host(stream_, d2h, &r3));
  EXPECT_EQ(backend_.synchronize(stream_).code, Errc::device_error);
  EXPECT_TRUE(rz.status);
  EXPECT_EQ(r1.status.code, Errc::device_error);
  EXPECT_EQ(r1.pages_done, 0u);
  EXPECT_EQ(r2.status.code, Errc::device_error);
  EXPECT_TRUE(r3.status);
  EXPECT_EQ(backend_.fault_injection().copy_fail_at_page, -1);
}

TEST_F(CpuBackendTest, EventsOrderWorkAcrossTwoStreams) {
  StreamId other = 0;
  ASSERT_TRUE(backend_.create_stream(&other));
  EventId ev = 0;
  ASSERT_TRUE(backend_.create_event(&ev));
  FaultInjection slow;
  slow.copy_delay_us = 100'000;
  backend_.set_fault_injection(slow);
  HostPages in(backend_, 1), out(backend_, 1);
  in.fill(0, 55);
  std::memset(words(dev(0)), 0, kPageSize);
  const HostToDevicePage h2d[] = {{in.page(0), dev(0)}};
  ASSERT_TRUE(backend_.copy_to_device(stream_, h2d, nullptr));  // slow, on stream_
  ASSERT_TRUE(backend_.record_event(stream_, ev));
  backend_.set_fault_injection({});
  ASSERT_TRUE(backend_.stream_wait_event(other, ev));
  const DeviceToHostPage d2h[] = {{dev(0), out.page(0)}};
  ASSERT_TRUE(backend_.copy_to_host(other, d2h, nullptr));  // must see the slow copy's data
  ASSERT_TRUE(backend_.synchronize(other));
  EXPECT_TRUE(page_has(out.page(0), 55));
  ASSERT_TRUE(backend_.synchronize_event(ev));
  backend_.destroy_event(ev);
  backend_.destroy_stream(other);
}

TEST_F(CpuBackendTest, SynchronizeEventBlocksUntilTheRecordedWorkRan) {
  EventId ev = 0;
  ASSERT_TRUE(backend_.create_event(&ev));
  EXPECT_TRUE(backend_.synchronize_event(ev));  // never recorded: complete
  std::atomic<bool> ran{false};
  ASSERT_TRUE(backend_.launch(stream_, 1, [&](std::size_t, std::size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ran = true;
  }, nullptr));
  ASSERT_TRUE(backend_.record_event(stream_, ev));
  ASSERT_TRUE(backend_.synchronize_event(ev));
  EXPECT_TRUE(ran.load());
  backend_.destroy_event(ev);
}

TEST_F(CpuBackendTest, DestroyingAnEventWithQueuedWaitsIsSafe) {
  StreamId other = 0;
  ASSERT_TRUE(backend_.create_stream(&other));
  EventId ev = 0;
  ASSERT_TRUE(backend_.create_event(&ev));
  ASSERT_TRUE(backend_.launch(stream_, 1, [](std::size_t, std::size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }, nullptr));
  ASSERT_TRUE(backend_.record_event(stream_, ev));
  ASSERT_TRUE(backend_.stream_wait_event(other, ev));
  backend_.destroy_event(ev);
  EXPECT_TRUE(backend_.synchronize(other));
  EXPECT_EQ(backend_.synchronize_event(ev).code, Errc::invalid_argument);
  backend_.destroy_stream(other);
}

TEST_F(CpuBackendTest, DestroyStreamRunsEverythingQueuedFirst) {
  StreamId s = 0;
  ASSERT_TRUE(backend_.create_stream(&s));
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(backend_.launch(s, 1, [&](std::size_t, std::size_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++ran;
    }, nullptr));
  backend_.destroy_stream(s);
  EXPECT_EQ(ran.load(), 20);
  EXPECT_EQ(backend_.synchronize(s).code, Errc::invalid_argument);
}

TEST_F(CpuBackendTest, LaunchRunsEveryIndexExactlyOnce) {
  constexpr std::size_t n = 10'000;
  std::vector<std::atomic<int>> hits(n);
  BatchResult r;
  ASSERT_TRUE(backend_.launch(stream_, n, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) ++hits[i];
  }, &r));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(r.pages_done, n);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << i;
}

TEST_F(CpuBackendTest, KernelThroughDeviceSpanReadsResidentPagesAndFaultsOnAMissingOne) {
  // A hand-built page table: pages 0 and 2 resident, page 1 not (entry 0).
  for (std::size_t p : {0u, 2u})
    for (std::size_t w = 0; w < kWords; ++w) words(dev(p))[w] = p * kWords + w;
  const std::uint64_t table_pages[] = {dev(0), 0, dev(2)};
  const DevicePageTable table{table_pages, 3, 0, 3 * kPageSize};

  std::atomic<std::uint64_t> sum{0};
  BatchResult ok;
  ASSERT_TRUE(backend_.launch(stream_, kWords, [&](std::size_t first, std::size_t last) {
    device_span<std::uint64_t> span(table);
    std::uint64_t local = 0;
    for (std::size_t i = first; i < last; ++i) local += span[i];
    sum += local;
  }, &ok));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(ok.status);
  EXPECT_EQ(sum.load(), kWords * (kWords - 1) / 2);

  BatchResult fault;
  ASSERT_TRUE(backend_.launch(stream_, 3 * kWords, [&](std::size_t first, std::size_t last) {
    device_span<std::uint64_t> span(table);
    for (std::size_t i = first; i < last; ++i) span[i] += 1;
  }, &fault));
  const Status sync = backend_.synchronize(stream_);
  EXPECT_EQ(sync.code, Errc::device_fault);
  EXPECT_EQ(fault.status.code, Errc::device_fault);
  EXPECT_NE(fault.status.message.find("byte offset 4096"), std::string::npos) << fault.status.message;
  EXPECT_LE(fault.pages_done, kWords);
}

TEST_F(CpuBackendTest, KernelExceptionBecomesDeviceErrorAndTheStreamGoesOn) {
  BatchResult r;
  ASSERT_TRUE(backend_.launch(stream_, 4, [](std::size_t, std::size_t) { throw std::runtime_error("boom"); }, &r));
  const Status sync = backend_.synchronize(stream_);
  EXPECT_EQ(sync.code, Errc::device_error);
  EXPECT_NE(sync.message.find("boom"), std::string::npos) << sync.message;
  EXPECT_EQ(r.pages_done, 0u);
  BatchResult after;
  ASSERT_TRUE(backend_.launch(stream_, 4, [](std::size_t, std::size_t) {}, &after));
  EXPECT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(after.pages_done, 4u);
}

TEST_F(CpuBackendTest, BadArgumentsGetClearStatusesAndQueueNothing) {
  HostPages host(backend_, 1);
  constexpr StreamId kNoSuchStream = 9999;
  const HostToDevicePage good[] = {{host.page(0), dev(0)}};
  Status s = backend_.copy_to_device(kNoSuchStream, good, nullptr);
  EXPECT_EQ(s.code, Errc::invalid_argument);
  EXPECT_NE(s.message.find("unknown stream 9999"), std::string::npos) << s.message;

  const HostToDevicePage null_host[] = {{nullptr, dev(0)}};
  EXPECT_EQ(backend_.copy_to_device(stream_, null_host, nullptr).code, Errc::invalid_argument);
  const HostToDevicePage foreign[] = {{host.page(0), addr(host.page(0))}};  // not device memory
  s = backend_.copy_to_device(stream_, foreign, nullptr);
  EXPECT_EQ(s.code, Errc::invalid_argument);
  EXPECT_NE(s.message.find("not a page of an allocated chunk"), std::string::npos) << s.message;
  const DeviceToHostPage unaligned[] = {{dev(0) + 8, host.page(0)}};
  EXPECT_EQ(backend_.copy_to_host(stream_, unaligned, nullptr).code, Errc::invalid_argument);
  const DeviceToDevicePage null_src[] = {{0, dev(0)}};
  EXPECT_EQ(backend_.copy_device_to_device(stream_, null_src, nullptr).code, Errc::invalid_argument);
  const DeviceAddress beyond[] = {dev(0) + kChunkSize * 100};
  EXPECT_EQ(backend_.zero_device(stream_, beyond, nullptr).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.launch(stream_, 1, HostKernel{}, nullptr).code, Errc::invalid_argument);

  EventId ev = 0;
  EXPECT_EQ(backend_.record_event(stream_, 777).code, Errc::invalid_argument);
  ASSERT_TRUE(backend_.create_event(&ev));
  EXPECT_EQ(backend_.record_event(kNoSuchStream, ev).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.stream_wait_event(stream_, 777).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.synchronize_event(777).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.synchronize(kNoSuchStream).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.create_stream(nullptr).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.create_event(nullptr).code, Errc::invalid_argument);
  EXPECT_EQ(backend_.allocate_chunk(nullptr).code, Errc::invalid_argument);
  backend_.destroy_event(ev);
  // Unknown ids and foreign pointers are ignored, not crashes.
  backend_.destroy_event(777);
  backend_.destroy_stream(kNoSuchStream);
  backend_.free_chunk(12345);
  backend_.free_host(host.page(0) + 1);
  // Nothing failed asynchronously: the rejected calls queued nothing.
  EXPECT_TRUE(backend_.synchronize(stream_));
}

TEST_F(CpuBackendTest, EmptyBatchesAndEmptyLaunchesAreOrderedNoOps) {
  BatchResult r{{Errc::busy, "unwritten"}, 7};
  ASSERT_TRUE(backend_.copy_to_device(stream_, {}, &r));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_TRUE(r.status);
  EXPECT_EQ(r.pages_done, 0u);
  BatchResult l{{Errc::busy, "unwritten"}, 7};
  ASSERT_TRUE(backend_.launch(stream_, 0, [](std::size_t, std::size_t) { FAIL(); }, &l));
  ASSERT_TRUE(backend_.synchronize(stream_));
  EXPECT_EQ(l.pages_done, 0u);
}

TEST(CpuBackendThreads, ManyThreadsEachWithTheirOwnStreamCopyConcurrently) {
  CpuBackendOptions options;
  options.memory_bytes = 4 * kChunkSize;
  options.copy_threads = 2;
  CpuBackend backend(options);
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      DeviceAddress chunk = 0;
      StreamId stream = 0;
      if (!backend.allocate_chunk(&chunk) || !backend.create_stream(&stream)) {
        ++failures;
        return;
      }
      HostPages in(backend, 128), out(backend, 128);
      for (int round = 0; round < 20; ++round) {
        std::vector<HostToDevicePage> h2d;
        std::vector<DeviceToHostPage> d2h;
        for (std::size_t i = 0; i < 128; ++i) {
          in.fill(i, static_cast<std::uint64_t>(t * 100000 + round * 1000) + i);
          h2d.push_back({in.page(i), chunk + i * kPageSize});
          d2h.push_back({chunk + i * kPageSize, out.page(i)});
        }
        BatchResult a, b;
        if (!backend.copy_to_device(stream, h2d, &a) || !backend.copy_to_host(stream, d2h, &b) ||
            !backend.synchronize(stream) || a.pages_done != 128 || b.pages_done != 128) {
          ++failures;
        }
        for (std::size_t i = 0; i < 128; ++i)
          if (!page_has(out.page(i), static_cast<std::uint64_t>(t * 100000 + round * 1000) + i)) ++failures;
      }
      backend.destroy_stream(stream);
      backend.free_chunk(chunk);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(backend.chunks_in_use(), 0u);
}

TEST(CpuBackendThreads, SeveralThreadsShareOneStreamAndEachSynchronizeSeesItsWorkDone) {
  CpuBackend backend(kChunkSize);
  DeviceAddress chunk = 0;
  StreamId stream = 0;
  ASSERT_TRUE(backend.allocate_chunk(&chunk));
  ASSERT_TRUE(backend.create_stream(&stream));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      HostPages host(backend, 1);
      for (int round = 0; round < 50; ++round) {
        host.fill(0, static_cast<std::uint64_t>(t * 1000 + round));
        const DeviceAddress page = chunk + static_cast<std::size_t>(t) * kPageSize;
        const HostToDevicePage h2d[] = {{host.page(0), page}};
        const DeviceToHostPage d2h[] = {{page, host.page(0)}};
        if (!backend.copy_to_device(stream, h2d, nullptr)) ++failures;
        const DeviceAddress z[] = {page};
        (void)backend.zero_device(stream, z, nullptr);
        if (!backend.copy_to_host(stream, d2h, nullptr) || !backend.synchronize(stream)) ++failures;
        if (host.page(0)[0] != 0) ++failures;  // zeroed before it came back, in order
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  backend.destroy_stream(stream);
  backend.free_chunk(chunk);
}

}  // namespace
}  // namespace uhmm::detail
