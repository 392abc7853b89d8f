// The public Model: config + weights -> a bound Network, and the entry points of the API.
#include <cmath>
#include <random>

#include "kernels/flops.h"
#include "kernels/ops.h"
#include "mambacv/mambacv.h"
#include "vision/network.h"

namespace mambacv {

const char* core_name(Core c) { return c == Core::V0 ? "v0" : "v1"; }

Core parse_core(const std::string& s) {
  if (s == "v0" || s == "0" || s == "corev0") return Core::V0;
  if (s == "v1" || s == "1" || s == "corev1") return Core::V1;
  MAMBACV_FAIL("--core: expected v0 or v1, got '" << s << "'");
}

namespace {
// Float weights converted to f32 host tensors (the compute copy; reduced-precision copies are made per policy).
TensorMap to_host_f32(const TensorMap& w) {
  TensorMap out;
  for (const auto& [name, t] : w) out[name] = t.dtype() == DType::F32 ? t : t.to(DType::F32);
  return out;
}

// Applies --threads to the calling thread's parallel regions (OpenMP's thread count is per calling thread).
void apply_threads(const Options& opt) {
  if (opt.threads > 0) ops::set_num_threads(opt.threads);
}

void check_input(const Tensor& x, const detail::Network& net) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4 && x.dim(1) == 3,
                "input: expected a (B, 3, H, W) image tensor, got " << (x.defined() ? x.str() : "an empty tensor"));
  MAMBACV_CHECK(x.dtype() == DType::F32, "input: expected f32 (normalised pixels), got " << x.str());
  MAMBACV_CHECK(x.dim(0) >= 1, "input: batch size must be at least 1, got " << x.str());
}
}  // namespace

Model::Model(std::shared_ptr<const detail::Network> net, Options opt) : net_(std::move(net)), opt_(opt) {}

Model Model::load(const ModelConfig& cfg, const TensorMap& weights, const Options& opt, const std::string& source) {
  detail::make_policy(opt);  // reject unsupported options before the work
  std::unique_ptr<detail::Network> net = detail::make_network(cfg);
  TensorMap w = net->canonicalize(weights);
  for (const auto& [name, t] : w)
    MAMBACV_CHECK(is_float(t.dtype()) || t.dtype() == DType::I64,
                  source << ": tensor " << name << " has dtype " << dtype_name(t.dtype()) << ", expected a float type");
  check_weights_match(w, net->param_specs(), source + " (config " + cfg.name + ")");
  net->bind(to_host_f32(w));
  return Model(std::shared_ptr<const detail::Network>(std::move(net)), opt);
}

Model Model::load(const std::string& config, const std::string& weights, const Options& opt) {
  ModelConfig cfg = load_model_config(config);
  WeightFile wf = load_weights(weights);
  return load(cfg, wf.tensors, opt, wf.path);
}

Model Model::random(const ModelConfig& cfg, const Options& opt, uint64_t seed) {
  detail::make_policy(opt);
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
  net->bind(w);
  return Model(std::shared_ptr<const detail::Network>(std::move(net)), opt);
}

const std::string& Model::arch() const { return net_->arch(); }
const Options& Model::options() const { return opt_; }
int Model::input_size() const { return net_->input_size(); }
int Model::num_classes() const { return net_->num_classes(); }
InputSpec Model::input_spec() const {
  InputSpec s;
  s.size = net_->input_size();
  return s;
}

Tensor Model::classify(const Tensor& x) const {
  check_input(x, *net_);
  apply_threads(opt_);
  MAMBACV_CHECK(net_->num_classes() > 0, "classify: model '" << net_->arch() << "' has no classifier head");
  auto out = net_->forward(x, detail::make_policy(opt_), detail::Wanted{{"logits"}});
  return out.at("logits");
}

std::map<std::string, Tensor> Model::features(const Tensor& x) const {
  check_input(x, *net_);
  apply_threads(opt_);
  return net_->forward(x, detail::make_policy(opt_), detail::Wanted{{"api_features"}});
}

std::map<std::string, Tensor> Model::forward_all(const Tensor& x) const {
  check_input(x, *net_);
  apply_threads(opt_);
  return net_->forward(x, detail::make_policy(opt_), detail::Wanted{{"*"}});
}

double Model::flops_per_image(int height, int width) const {
  Tensor x = Tensor::zeros({1, 3, height, width});
  check_input(x, *net_);
  apply_threads(opt_);
  ops::FlopCounter counter;
  net_->forward(x, detail::make_policy(opt_),
                detail::Wanted{{net_->num_classes() > 0 ? "logits" : "api_features"}});
  return counter.flops();
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : net_->param_specs()) n += shape_numel(p.shape);
  return n;
}

std::vector<ParamSpec> Model::parameter_specs() const { return net_->param_specs(); }

}  // namespace mambacv
