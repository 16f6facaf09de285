// SPDX-License-Identifier: Apache-2.0
// ProcessCollector of broker_metrics.h: build info and /proc/self figures.
#include <dirent.h>
#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "server/broker_metrics.h"

namespace iommu::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily One(const char* name, const char* help, MetricType type, double value,
                 std::vector<ClientMetric::Label> labels = {}) {
  MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  ClientMetric metric;
  metric.label = std::move(labels);
  if (type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

// System boot time (seconds since the epoch), from /proc/stat's btime.
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int count = 0;
  while (readdir(dir) != nullptr) ++count;
  closedir(dir);
  return count - 3;  // ".", ".." and the directory's own fd
}

}  // namespace

std::vector<MetricFamily> ProcessCollector::Collect() const {
  std::vector<MetricFamily> out;
  out.push_back(
      One("iommu_build_info", "Build of the running iommud (always 1).", MetricType::Gauge, 1,
          {{"build_type", IOMMU_BUILD_TYPE},
           {"grpc_version", grpc::Version()},
           {"protobuf_version", google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION)},
           {"version", IOMMU_VERSION}}));

  // /proc/self/stat: fields after the parenthesised command name; utime and
  // stime are fields 14 and 15, starttime 22, vsize 23, rss 24 (1-based).
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren != std::string::npos) {
    std::istringstream fields(stat.substr(paren + 2));
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    // f[0] is field 3 (state).
    if (f.size() > 21) {
      const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
      const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
      out.push_back(One("process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.", MetricType::Counter,
                        (std::stod(f[11]) + std::stod(f[12])) / ticks));
      out.push_back(One("process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
                        BootTimeSeconds() + std::stod(f[19]) / ticks));
      out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                        MetricType::Gauge, std::stod(f[20])));
      out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.",
                        MetricType::Gauge, std::stod(f[21]) * page));
    }
  }
  out.push_back(
      One("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, OpenFds()));
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(One("process_max_fds", "Maximum number of open file descriptors.",
                      MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace iommu::server
