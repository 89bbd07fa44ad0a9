#include "machine.hpp"

#include <fmt/format.h>
#include <sys/utsname.h>

#include <fstream>
#include <thread>

namespace uhmm::bench {

Machine Machine::describe(const std::string& backend) {
  Machine m;
  m.cpu = "unknown cpu";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0) {
      m.cpu = line.substr(line.find(':') + 2);
      break;
    }
  m.cpus = std::thread::hardware_concurrency();
  utsname u{};
  ::uname(&u);
  m.kernel = u.release;
  m.backend = backend;
  std::ifstream load("/proc/loadavg");
  std::string a, b, c;
  load >> a >> b >> c;
  m.load_average = fmt::format("{} {} {}", a, b, c);
  return m;
}

std::string Machine::line() const {
  return fmt::format("{}, {} cpus, Linux {}, {} backend, load average {} at start", cpu, cpus, kernel, backend,
                     load_average);
}

nlohmann::json Machine::json() const {
  return {{"cpu", cpu}, {"cpus", cpus}, {"kernel", kernel}, {"backend", backend}, {"load_average", load_average}};
}

std::size_t resident_anonymous_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;  // "RssAnon:   1234 kB"
  return 0;
}

}  // namespace uhmm::bench
