// The public Model: config + weights -> a bound Network, and the entry points of the API.
#include <algorithm>
#include <cmath>
#include <random>

#include <cstring>

#include "kernels/context.h"
#include "kernels/host_allocator.h"
#include "kernels/ops.h"
#include "mambacv/detection.h"
#include "mambacv/mambacv.h"
#include "vision/mask_rcnn.h"
#include "vision/network.h"

namespace mambacv {

namespace {
// More threads than this is a typo, not a machine: each would be an OS thread in every parallel region.
constexpr int kMaxThreads = 1024;

// Validates that this build can run `opt` (device, dtype) and returns the policy for it. Throws Error naming the
// option that cannot be honoured yet.
detail::Policy make_policy(const Options& opt) {
  require_device(opt.device, "model");
  MAMBACV_CHECK(opt.device == Device::Cpu,
                "--device cuda: the CUDA model path is not implemented yet in this version; use --device cpu");
  MAMBACV_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::F16 || opt.dtype == DType::BF16,
                "--dtype: expected f32, f16 or bf16, got " << dtype_name(opt.dtype));
  MAMBACV_CHECK(opt.threads >= 0 && opt.threads <= kMaxThreads,
                "--threads: expected 0 (all cores) or a count up to " << kMaxThreads << ", got " << opt.threads);
  MAMBACV_CHECK(opt.host_cache_mb <= (1 << 20), "host_cache_mb: expected at most 1048576 (1 TiB), got "
                                                     << opt.host_cache_mb);
  MAMBACV_CHECK(opt.batch_group >= 0, "batch_group: expected 0 (chosen from the L2 cache) or a count of images, got "
                                          << opt.batch_group);
  detail::Policy p;
  p.compute = opt.dtype;
  p.core = opt.core;
  return p;
}

// Counts FLOPs (and, when timing, seconds and bytes) per (stage, op).
class StatSink final : public TraceSink {
 public:
  explicit StatSink(bool timed) : timed_(timed) {}
  bool wants_time() const override { return timed_; }
  void record(const char* op, double seconds, double flops, double bytes, double exps) override {
    total_flops += flops;
    const int team = take_team();
    for (OpStat& s : stats)
      if (s.stage == stage() && s.op == op) {
        ++s.calls, s.seconds += seconds, s.flops += flops, s.bytes += bytes, s.exps += exps;
        s.threads = std::max(s.threads, team);
        return;
      }
    stats.push_back({stage(), op, 1, seconds, flops, bytes, team, exps});
  }
  std::vector<OpStat> stats;
  double total_flops = 0;

 private:
  bool timed_;
};

// Float weights as f32 host tensors, whatever the file holds (the caller's tensors are never modified). In a
// reduced compute dtype the GEMM and convolution weights are rounded to it when packed (Network::bind's
// gemm_storage); depthwise taps, norm parameters, biases, the SSM parameters and the embeddings stay f32.
TensorMap f32_weights(const TensorMap& w) {
  TensorMap out;
  for (const auto& [name, t] : w) out[name] = is_float(t.dtype()) && t.dtype() != DType::F32 ? t.to(DType::F32) : t;
  return out;
}

void check_input(const Tensor& x, const detail::Network& net) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4 && x.dim(1) == 3,
                "input: expected a (B, 3, H, W) image tensor, got " << (x.defined() ? x.str() : "an empty tensor"));
  MAMBACV_CHECK(x.dtype() == DType::F32, "input: expected f32 (normalised pixels), got " << x.str());
  MAMBACV_CHECK(x.dim(0) >= 1, "input: batch size must be at least 1, got " << x.str());
}
}  // namespace

Model::Model(std::shared_ptr<const detail::Network> net, Options opt) : net_(std::move(net)), opt_(opt) {
  if (opt_.host_cache_mb >= 0) alloc_ = std::make_shared<HostAllocator>(static_cast<size_t>(opt_.host_cache_mb) << 20);
}

namespace {
// The weights in the network's canonical names, checked against its parameter specs.
TensorMap matched_weights(const detail::Network& net, const ModelConfig& cfg, const TensorMap& weights,
                          const std::string& source) {
  TensorMap w = net.canonicalize(weights);
  for (const auto& [name, t] : w)
    MAMBACV_CHECK(is_float(t.dtype()) || t.dtype() == DType::I64,
                  source << ": tensor " << name << " has dtype " << dtype_name(t.dtype()) << ", expected a float type");
  check_weights_match(w, net.param_specs(), source + " (config " + cfg.name + ")");
  return w;
}
}  // namespace

TensorMap canonical_weights(const ModelConfig& cfg, const TensorMap& weights, const std::string& source) {
  const std::unique_ptr<detail::Network> net = detail::make_network(cfg);
  return matched_weights(*net, cfg, weights, source);
}

Model Model::load(const ModelConfig& cfg, const TensorMap& weights, const Options& opt, const std::string& source) {
  make_policy(opt);  // reject unsupported options before the work
  std::unique_ptr<detail::Network> net = detail::make_network(cfg);
  TensorMap w = matched_weights(*net, cfg, weights, source);
  net->bind(f32_weights(w), opt.dtype);
  host_cache_release();  // the load's temporaries (converted and raw copies) are not kept as idle cache
  Model m(std::shared_ptr<const detail::Network>(std::move(net)), opt);
  m.class_names_ = load_labels(cfg, m.num_classes());
  return m;
}

Model Model::load(const std::string& config, const std::string& weights, const Options& opt) {
  ModelConfig cfg = load_model_config(config);
  WeightFile wf = load_weights(weights);
  return load(cfg, wf.tensors, opt, wf.path);
}

Model Model::random(const ModelConfig& cfg, const Options& opt, uint64_t seed) {
  make_policy(opt);
  std::unique_ptr<detail::Network> net = detail::make_network(cfg);
  std::mt19937_64 rng(seed);
  TensorMap w;
  for (const ParamSpec& p : net->param_specs()) {
    Tensor t = Tensor::empty(p.shape);
    float* d = t.f32();
    int64_t n = t.numel();
    const std::string& s = p.name;
    auto ends = [&](const char* suf) {
      size_t l = std::strlen(suf);
      return s.size() >= l && s.compare(s.size() - l, l, suf) == 0;
    };
    if (ends("A_log") || ends("A_b_log") || ends("A_logs")) {
      int64_t N = p.shape.back();
      for (int64_t i = 0; i < n; ++i) d[i] = std::log(static_cast<float>(i % N + 1));
    } else if (ends(".D") || ends(".D_b") || ends(".Ds")) {
      t.fill(1.0f);
    } else if (p.shape.size() == 1 && ends(".weight")) {  // every 1-D weight of these models is a norm's scale
      t.fill(1.0f);
    } else if (ends("dt_proj.bias") || ends("dt_proj_b.bias") || ends("dt_projs_bias")) {
      // inverse softplus of dt spread log-uniformly over [1e-3, 1e-1], as upstream initialises
      std::uniform_real_distribution<float> u(std::log(1e-3f), std::log(1e-1f));
      for (int64_t i = 0; i < n; ++i) {
        float dt = std::exp(u(rng));
        d[i] = dt + std::log(-std::expm1(-dt));
      }
    } else if (p.shape.size() == 1) {
      t.fill(0.0f);
    } else {
      int64_t fan_in = n / p.shape[0];
      if (p.shape.size() == 3 && s.find("x_proj_weight") != std::string::npos) fan_in = p.shape[2];
      if (p.shape.size() == 3 && s.find("dt_projs_weight") != std::string::npos) fan_in = p.shape[2];
      float bound = 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(fan_in, 1)));
      std::uniform_real_distribution<float> u(-bound, bound);
      for (int64_t i = 0; i < n; ++i) d[i] = u(rng);
    }
    w[p.name] = t;
  }
  net->bind(std::move(w), opt.dtype);
  host_cache_release();  // the load's temporaries are not kept as idle cache
  Model m(std::shared_ptr<const detail::Network>(std::move(net)), opt);
  m.class_names_ = load_labels(cfg, m.num_classes());
  return m;
}

const std::string& Model::arch() const { return net_->arch(); }
const Options& Model::options() const { return opt_; }
int Model::input_size() const { return net_->input_size(); }
int Model::num_classes() const { return net_->num_classes(); }
const std::vector<std::string>& Model::class_names() const { return class_names_; }

std::vector<ClassScore> top_k(const float* logits, int n, int k, const std::vector<std::string>& labels) {
  MAMBACV_CHECK(n >= 1 && k >= 1, "top_k: expected at least one class and k >= 1, got " << n << " classes, k " << k);
  for (int i = 0; i < n; ++i)
    MAMBACV_CHECK(std::isfinite(logits[i]), "top_k: logit " << i << " is " << logits[i] << ": no probability");
  const double mx = *std::max_element(logits, logits + n);
  double sum = 0;
  std::vector<double> p(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) sum += p[i] = std::exp(static_cast<double>(logits[i]) - mx);
  std::vector<int> idx(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) idx[i] = i;
  k = std::min(k, n);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  const bool named = static_cast<int>(labels.size()) == n;
  std::vector<ClassScore> out;
  for (int i = 0; i < k; ++i)
    out.push_back({idx[i], static_cast<float>(p[idx[i]] / sum), named ? labels[idx[i]] : std::string()});
  return out;
}

std::vector<std::vector<ClassScore>> top_k(const Tensor& logits, int k, const std::vector<std::string>& labels) {
  MAMBACV_CHECK(logits.defined() && logits.ndim() == 2 && logits.dtype() == DType::F32,
                "top_k: expected (B, classes) f32 logits, got " << (logits.defined() ? logits.str() : "an empty tensor"));
  std::vector<std::vector<ClassScore>> out;
  const int n = static_cast<int>(logits.dim(1));
  for (int64_t b = 0; b < logits.dim(0); ++b) out.push_back(top_k(logits.f32() + b * n, n, k, labels));
  return out;
}
InputSpec Model::input_spec() const {
  InputSpec s;
  s.size = net_->input_size();
  return s;
}

std::map<std::string, Tensor> Model::run(const Tensor& x, const std::vector<std::string>& wanted,
                                         detail::DetectionCall* detection, void* trace) const {
  check_input(x, *net_);
  ExecContext ctx = ExecContext::cpu(opt_.threads);
  ctx.alloc = alloc_;
  ctx.trace = static_cast<TraceSink*>(trace);
  detail::ForwardCall call;
  call.x = x;
  call.policy = make_policy(opt_);
  call.wanted.names.insert(wanted.begin(), wanted.end());
  call.detection = detection;
  call.batch_group = opt_.batch_group;
  if (!opt_.check_finite) return net_->forward(ctx, call);
  detail::FiniteWatch watch;
  call.policy.watch = &watch;
  std::map<std::string, Tensor> out = net_->forward(ctx, call);
  for (const auto& [name, t] : out)  // outputs produced past the last boundary (features, stage maps)
    if (!watch.found && t.dtype() == DType::F32 && !ops::all_finite(ctx, t)) {
      watch.found = true;
      watch.first = "output " + name;
    }
  MAMBACV_CHECK(!watch.found, "non-finite values (NaN or Inf) first at " << watch.first);
  return out;
}

Tensor Model::classify(const Tensor& x) const {
  MAMBACV_CHECK(net_->num_classes() > 0, "classify: model '" << net_->arch() << "' has no classifier head");
  return run(x, {"logits"}).at("logits");
}

std::map<std::string, Tensor> Model::features(const Tensor& x) const { return run(x, {"api_features"}); }

std::map<std::string, Tensor> Model::forward_all(const Tensor& x) const { return run(x, {"*"}); }

double Model::flops_per_image(int height, int width) const {
  StatSink sink(/*timed=*/false);
  run(Tensor::zeros({1, 3, height, width}), {net_->num_classes() > 0 ? "logits" : "api_features"}, nullptr, &sink);
  return sink.total_flops;
}

std::vector<OpStat> Model::profile(const Tensor& x) const {
  return traced(x, {net_->num_classes() > 0 ? "logits" : "api_features"});
}

std::vector<OpStat> Model::traced(const Tensor& x, const std::vector<std::string>& wanted,
                                  detail::DetectionCall* detection) const {
  StatSink sink(/*timed=*/true);
  run(x, wanted, detection, &sink);
  return sink.stats;
}

size_t Model::cached_bytes() const { return alloc_ ? alloc_->idle_bytes() : default_host_allocator()->idle_bytes(); }

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : net_->param_specs()) n += shape_numel(p.shape);
  return n;
}

std::vector<ParamSpec> Model::parameter_specs() const { return net_->param_specs(); }

ModelSummary summarize_model(const ModelConfig& cfg) {
  const std::unique_ptr<detail::Network> net = detail::make_network(cfg);
  const std::vector<ParamSpec> specs = net->param_specs();
  ModelSummary s;
  s.name = cfg.name;
  s.arch = cfg.arch;
  s.description = cfg.description;
  s.checkpoint = cfg.checkpoint;
  s.checkpoint_url = cfg.checkpoint_url;
  for (const ParamSpec& p : specs) s.parameters += shape_numel(p.shape);
  if (cfg.arch == "mask_rcnn") {
    const DetectOptions d;
    s.task = "detection";
    s.num_classes = detail::detection_classes(specs);
    s.input_width = d.max_long;
    s.input_height = d.max_short;
  } else {
    s.num_classes = net->num_classes();
    s.task = s.num_classes > 0 ? "classification" : "features";
    s.input_width = s.input_height = net->input_size();
  }
  return s;
}

}  // namespace mambacv
