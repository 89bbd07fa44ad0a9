// The Backend contract (include/uhmm/backend.hpp), written once and run on
// every backend: cpu always; cuda and hip where their plugin loads and the
// runtime reports a device (GTEST_SKIP saying why elsewhere); the GPU plugin on
// the emulated runtime always (Emulated/*, with and without injected delays). Data is checked
// only through the backend's own copies, as device memory need not be
// host-visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../../driver/backend_probe.hpp"
#include "../../driver/cpu/cpu_backend.hpp"
#include "emulated_runtime.hpp"
#include "host_pages.hpp"

namespace uhmm::detail {
namespace {

constexpr std::size_t kWords = kPageSize / 8;
constexpr std::uint64_t kPoolBytes = 8 * kChunkSize;

// The GPU plugin on the emulated runtime (tests only): "emulated", or
// "emulated_delayed" with a random delay before every queued operation.
bool emulated(const std::string& name) { return name.rfind("emulated", 0) == 0; }

std::unique_ptr<Backend> make_backend(const std::string& name, std::uint64_t pool_bytes, std::string* why) {
  if (name == "cpu") return std::make_unique<CpuBackend>(pool_bytes);
  if (emulated(name)) emuTestSetDelay(name == "emulated_delayed" ? 300 : 0, 42);
  // The test binary does not live beside libuhmm.so: look where the build puts the plugins.
  const BackendProbe probe = emulated(name) ? probe_backend("emulated", UHMM_TEST_EMULATED_PLUGIN_DIR)
                                            : probe_backend(name, UHMM_TEST_PLUGIN_DIR);
  if (!probe.available()) {
    *why = probe.why;
    return nullptr;
  }
  char reason[512] = {};
  std::unique_ptr<Backend> backend(probe.plugin->create_backend(0, pool_bytes, reason, sizeof reason));
  if (!backend) *why = reason;
  return backend;
}

using test::HostPages;

class BackendConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    backend_ = make_backend(GetParam(), kPoolBytes, &why);
    // The emulated plugin is built with the tests: it must run, never skip.
    if (!backend_ && emulated(GetParam())) FAIL() << "the emulated plugin did not load: " << why;
    if (!backend_) GTEST_SKIP() << GetParam() << " backend not available here: " << why;
    ASSERT_TRUE(backend_->allocate_chunk(&chunk_));
    ASSERT_TRUE(backend_->create_stream(&stream_));
  }
  void TearDown() override {
    if (!backend_) return;
    backend_->destroy_stream(stream_);
    backend_->free_chunk(chunk_);
  }
  DeviceAddress device_page(std::size_t i) const { return chunk_ + i * kPageSize; }

  // Copies host pages [0, n) to device pages `to[k]`, then back into `out`.
  void round_trip(bool pinned, const std::vector<std::size_t>& to) {
    const std::size_t n = to.size();
    HostPages in(*backend_, n, pinned), out(*backend_, n, pinned);
    std::vector<HostToDevicePage> down;
    std::vector<DeviceToHostPage> up;
    for (std::size_t k = 0; k < n; ++k) {
      in.fill(k, k + 7);
      std::fill_n(out.page(k), kWords, ~std::uint64_t{0});
      down.push_back({in.page(k), device_page(to[k])});
      up.push_back({device_page(to[k]), out.page(k)});
    }
    BatchResult r1, r2;
    ASSERT_TRUE(backend_->copy_to_device(stream_, down, &r1));
    ASSERT_TRUE(backend_->copy_to_host(stream_, up, &r2));
    ASSERT_TRUE(backend_->synchronize(stream_));
    EXPECT_TRUE(r1.status) << r1.status.message;
    EXPECT_TRUE(r2.status) << r2.status.message;
    EXPECT_EQ(r1.pages_done, n);
    EXPECT_EQ(r2.pages_done, n);
    for (std::size_t k = 0; k < n; ++k) ASSERT_TRUE(out.has(k, k + 7)) << "page " << k << " (device page " << to[k] << ")";
  }

  std::unique_ptr<Backend> backend_;
  DeviceAddress chunk_ = 0;
  StreamId stream_ = 0;
};

TEST_P(BackendConformance, ChunksAreAlignedAndDistinctUntilThePoolIsFull) {
  std::set<DeviceAddress> chunks{chunk_};
  for (;;) {
    DeviceAddress c = 0;
    const Status s = backend_->allocate_chunk(&c);
    if (!s) {
      EXPECT_EQ(s.code, Errc::out_of_memory) << s.message;
      break;
    }
    EXPECT_EQ(c % kChunkSize, 0u);
    EXPECT_TRUE(chunks.insert(c).second) << "chunk handed out twice";
    ASSERT_LE(chunks.size(), kPoolBytes / kChunkSize);
  }
  EXPECT_EQ(chunks.size(), kPoolBytes / kChunkSize);
  // A freed chunk can be had again.
  const DeviceAddress last = *chunks.rbegin();
  backend_->free_chunk(last);
  DeviceAddress again = 0;
  ASSERT_TRUE(backend_->allocate_chunk(&again));
  EXPECT_EQ(again, last);
  for (DeviceAddress c : chunks)
    if (c != chunk_) backend_->free_chunk(c);
}

TEST_P(BackendConformance, ContiguousPagesRoundTripThroughPinnedMemory) {
  std::vector<std::size_t> to;
  for (std::size_t i = 0; i < 64; ++i) to.push_back(i);
  round_trip(true, to);
}

TEST_P(BackendConformance, ScatteredPagesRoundTripThroughPageableMemory) {
  // Reversed and strided: no two pages adjacent (the GPU's kernel path), more
  // pages than one staging buffer-full and one kernel page list.
  std::vector<std::size_t> to;
  for (std::size_t i = 0; i < 256; ++i) to.push_back(kPagesPerChunk - 1 - 2 * i);
  round_trip(false, to);
}

TEST_P(BackendConformance, ScatteredPagesRoundTripThroughPinnedMemory) {
  std::vector<std::size_t> to;
  for (std::size_t i = 0; i < 300; ++i) to.push_back((i * 37) % kPagesPerChunk);
  std::sort(to.begin(), to.end());
  to.erase(std::unique(to.begin(), to.end()), to.end());
  round_trip(true, to);
}

TEST_P(BackendConformance, ZeroAndDeviceToDeviceCopies) {
  constexpr std::size_t n = 16;
  HostPages in(*backend_, n, true), out(*backend_, 2 * n, true);
  std::vector<HostToDevicePage> down;
  for (std::size_t k = 0; k < n; ++k) {
    in.fill(k, 100 + k);
    down.push_back({in.page(k), device_page(2 * k)});  // even pages
  }
  std::vector<DeviceToDevicePage> d2d;
  std::vector<DeviceAddress> zero;
  for (std::size_t k = 0; k < n; ++k) {
    d2d.push_back({device_page(2 * k), device_page(2 * k + 1)});  // odd <- even
    if (k % 2 == 0) zero.push_back(device_page(2 * k));            // then every other even page zeroed
  }
  std::vector<DeviceToHostPage> up;
  for (std::size_t p = 0; p < 2 * n; ++p) up.push_back({device_page(p), out.page(p)});
  BatchResult r[4];
  ASSERT_TRUE(backend_->copy_to_device(stream_, down, &r[0]));
  ASSERT_TRUE(backend_->copy_device_to_device(stream_, d2d, &r[1]));
  ASSERT_TRUE(backend_->zero_device(stream_, zero, &r[2]));
  ASSERT_TRUE(backend_->copy_to_host(stream_, up, &r[3]));
  ASSERT_TRUE(backend_->synchronize(stream_));
  for (const BatchResult& b : r) EXPECT_TRUE(b.status) << b.status.message;
  for (std::size_t k = 0; k < n; ++k) {
    EXPECT_TRUE(out.has(2 * k + 1, 100 + k)) << "odd page " << 2 * k + 1;
    if (k % 2 == 0)
      EXPECT_TRUE(out.is_zero(2 * k)) << "zeroed page " << 2 * k;
    else
      EXPECT_TRUE(out.has(2 * k, 100 + k)) << "even page " << 2 * k;
  }
}

TEST_P(BackendConformance, AnEventOrdersOneStreamAfterAnother) {
  StreamId other = 0;
  EventId event = 0;
  ASSERT_TRUE(backend_->create_stream(&other));
  ASSERT_TRUE(backend_->create_event(&event));
  constexpr std::size_t n = 32;
  HostPages in(*backend_, n, true), out(*backend_, n, true);
  std::vector<HostToDevicePage> down;
  std::vector<DeviceToHostPage> up;
  for (std::size_t k = 0; k < n; ++k) {
    in.fill(k, 500 + k);
    down.push_back({in.page(k), device_page(k)});
    up.push_back({device_page(k), out.page(k)});
  }
  ASSERT_TRUE(backend_->copy_to_device(stream_, down, nullptr));
  ASSERT_TRUE(backend_->record_event(stream_, event));
  ASSERT_TRUE(backend_->stream_wait_event(other, event));
  ASSERT_TRUE(backend_->copy_to_host(other, up, nullptr));
  ASSERT_TRUE(backend_->synchronize(other));
  for (std::size_t k = 0; k < n; ++k) EXPECT_TRUE(out.has(k, 500 + k)) << k;
  ASSERT_TRUE(backend_->synchronize_event(event));
  backend_->destroy_event(event);
  backend_->destroy_stream(other);
}

TEST_P(BackendConformance, BadArgumentsQueueNothing) {
  HostPages in(*backend_, 1, true);
  const HostToDevicePage page{in.page(0), device_page(0)};
  BatchResult untouched{{Errc::busy, "untouched"}, 99};
  Status s = backend_->copy_to_device(stream_ + 1000, {&page, 1}, &untouched);
  EXPECT_EQ(s.code, Errc::invalid_argument) << s.message;
  const HostToDevicePage unaligned{in.page(0), device_page(0) + 8};
  s = backend_->copy_to_device(stream_, {&unaligned, 1}, &untouched);
  EXPECT_EQ(s.code, Errc::invalid_argument) << s.message;
  ASSERT_TRUE(backend_->synchronize(stream_));
  EXPECT_EQ(untouched.status.code, Errc::busy);
  EXPECT_EQ(untouched.pages_done, 99u);
}

TEST_P(BackendConformance, HostKernelsRunOnlyWhereTheBackendSaysSo) {
  BatchResult result;
  const Status s = backend_->launch(stream_, 4, [](std::size_t, std::size_t) {}, &result);
  if ((backend_->info().capabilities & kCapHostKernels) != 0) {
    EXPECT_TRUE(s) << s.message;
  } else {
    EXPECT_EQ(s.code, Errc::invalid_argument);
    EXPECT_NE(s.message.find("host kernels"), std::string::npos) << s.message;
  }
  ASSERT_TRUE(backend_->synchronize(stream_));
}

TEST_P(BackendConformance, DeviceBuffersRoundTripBytesOnAStream) {
  DeviceAddress buffer = 0;
  ASSERT_TRUE(backend_->allocate_device_buffer(1000, &buffer));
  EXPECT_NE(buffer, 0u);
  EXPECT_EQ(buffer % 256, 0u);
  std::vector<std::uint64_t> in(125), out(125, 0);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = i * 0x9e3779b97f4a7c15ull;
  ASSERT_TRUE(backend_->copy_to_device_buffer(stream_, buffer, in.data(), 1000));
  // A part of the buffer, at an offset.
  ASSERT_TRUE(backend_->copy_from_device_buffer(stream_, out.data() + 1, buffer + 8, 992));
  ASSERT_TRUE(backend_->synchronize(stream_));
  EXPECT_EQ(out[0], 0u);
  for (std::size_t i = 1; i < in.size(); ++i) ASSERT_EQ(out[i], in[i]) << i;
  backend_->free_device_buffer(buffer);
}

TEST_P(BackendConformance, DeviceBufferBadArgumentsQueueNothing) {
  DeviceAddress buffer = 0;
  EXPECT_EQ(backend_->allocate_device_buffer(0, &buffer).code, Errc::zero_length);
  EXPECT_EQ(backend_->allocate_device_buffer(64, nullptr).code, Errc::invalid_argument);
  ASSERT_TRUE(backend_->allocate_device_buffer(64, &buffer));
  std::uint64_t word[16] = {};
  EXPECT_EQ(backend_->copy_to_device_buffer(stream_, buffer + 8, word, 64).code, Errc::invalid_argument);  // runs past
  EXPECT_EQ(backend_->copy_to_device_buffer(stream_, device_page(0), word, 8).code, Errc::invalid_argument);
  EXPECT_EQ(backend_->copy_to_device_buffer(stream_, buffer, nullptr, 8).code, Errc::invalid_argument);
  EXPECT_EQ(backend_->copy_from_device_buffer(stream_ + 1000, word, buffer, 8).code, Errc::invalid_argument);
  EXPECT_EQ(backend_->copy_from_device_buffer(stream_, nullptr, buffer, 8).code, Errc::invalid_argument);
  EXPECT_TRUE(backend_->copy_to_device_buffer(stream_, buffer, word, 0));  // empty: a no-op
  ASSERT_TRUE(backend_->synchronize(stream_));
  backend_->free_device_buffer(buffer);
  backend_->free_device_buffer(buffer + 4096);  // unknown: ignored
}

TEST_P(BackendConformance, ANativeStreamExistsExactlyOnGpuBackends) {
  void* native = backend_->native_stream(stream_);
  if (GetParam() == "cpu")
    EXPECT_EQ(native, nullptr);
  else
    EXPECT_NE(native, nullptr);
  EXPECT_EQ(backend_->native_stream(stream_ + 1000), nullptr);
}

// Issue 16, defect 9: an application's own failed runtime call on this thread,
// never cleared, must not fail uhmm's next copy-kernel launch.
TEST(EmulatedPluginDefects, AStaleErrorOfTheApplicationIsNotBlamedOnTheCopyKernel) {
  std::string why;
  auto backend = make_backend("emulated", kPoolBytes, &why);
  ASSERT_NE(backend, nullptr) << why;
  ASSERT_NE(backend->info().capabilities & kCapCopyKernels, 0u);
  DeviceAddress chunk = 0;
  StreamId stream = 0;
  ASSERT_TRUE(backend->allocate_chunk(&chunk));
  ASSERT_TRUE(backend->create_stream(&stream));
  constexpr std::size_t n = 16;  // scattered: the gather/scatter kernel's path
  HostPages in(*backend, n, true), out(*backend, n, true);
  std::vector<HostToDevicePage> down;
  std::vector<DeviceToHostPage> up;
  for (std::size_t k = 0; k < n; ++k) {
    in.fill(k, k + 3);
    down.push_back({in.page(k), chunk + 2 * k * kPageSize});
    up.push_back({chunk + 2 * k * kPageSize, out.page(k)});
  }
  char not_device_memory[16];
  ASSERT_EQ(emuFree(not_device_memory), emuErrorInvalidValue);  // the application's, left in the last error
  BatchResult r1, r2;
  const Status s = backend->copy_to_device(stream, down, &r1);
  EXPECT_TRUE(s) << s.message;
  ASSERT_TRUE(backend->copy_to_host(stream, up, &r2));
  ASSERT_TRUE(backend->synchronize(stream));
  for (std::size_t k = 0; k < n; ++k) EXPECT_TRUE(out.has(k, k + 3)) << k;
  backend->destroy_stream(stream);
  backend->free_chunk(chunk);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConformance, ::testing::Values("cpu", "cuda", "hip"),
                         [](const auto& param_info) { return param_info.param; });
INSTANTIATE_TEST_SUITE_P(Emulated, BackendConformance, ::testing::Values("emulated", "emulated_delayed"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace uhmm::detail
