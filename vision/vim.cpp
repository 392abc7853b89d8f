// Vim (Vision Mamba), bidirectional "v2" blocks, middle class token, absolute position embedding.
// Mirrors hustvl/Vim vim/models_mamba.py VisionMamba.forward_features / forward (MODELS.md §2).
#include <cmath>
#include <nlohmann/json.hpp>

#include "kernels/ops.h"
#include "ssm/mamba_mixer.h"
#include "vision/config_util.h"
#include "vision/network.h"

namespace mambacv::detail {
namespace {

struct VimConfig {
  int64_t img_size = 224, patch_size = 16, stride = 16, embed_dim = 192, depth = 24, d_state = 16;
  int64_t num_classes = 1000, channels = 3, expand = 2, d_conv = 4;
  int64_t dt_rank = 0;  // ceil(embed_dim / 16)
  double norm_eps = 1e-5;
  bool divide_out = false;
};

VimConfig parse_vim(const ModelConfig& mc) {
  ConfigReader r(mc);
  VimConfig c;
  c.img_size = r.get_int("img_size", 224);
  c.patch_size = r.get_int("patch_size", 16);
  c.stride = r.get_int("stride", c.patch_size);
  c.embed_dim = r.get_int("embed_dim", 192);
  c.depth = r.get_int("depth", 24);
  c.d_state = r.get_int("d_state", 16);
  c.num_classes = r.get_int("num_classes", 1000);
  c.channels = r.get_int("channels", 3);
  c.norm_eps = r.get_double("norm_epsilon", 1e-5);
  // upstream spells it "if_devide_out"; accept the corrected spelling too
  c.divide_out = r.get_bool("if_devide_out", r.get_bool("if_divide_out", false));
  r.require_equal("bimamba_type", std::string("v2"), "v2");
  r.require_bool("if_cls_token", true);
  r.require_bool("use_middle_cls_token", true);
  r.require_bool("if_abs_pos_embed", true);
  r.require_bool("if_rope", false);
  r.require_bool("if_rope_residual", false);
  r.require_bool("rms_norm", true);
  r.require_bool("use_double_cls_token", false);
  r.require_bool("if_bidirectional", false);
  MAMBACV_CHECK(c.channels == 3, r.where() << ": channels must be 3, got " << c.channels);
  MAMBACV_CHECK(c.embed_dim > 0 && c.depth > 0 && c.d_state > 0 && c.patch_size > 0 && c.stride > 0 &&
                    c.img_size >= c.patch_size && c.num_classes >= 0,
                r.where() << ": invalid sizes (embed_dim, depth, d_state, patch_size, stride, img_size, num_classes)");
  c.dt_rank = (c.embed_dim + 15) / 16;
  return c;
}

class VimNetwork final : public Network {
 public:
  explicit VimNetwork(const ModelConfig& mc) : cfg_(parse_vim(mc)), name_(mc.name) {
    grid0_ = (cfg_.img_size - cfg_.patch_size) / cfg_.stride + 1;
  }
  const std::string& arch() const override { return arch_; }
  int input_size() const override { return static_cast<int>(cfg_.img_size); }
  int num_classes() const override { return static_cast<int>(cfg_.num_classes); }

  std::vector<ParamSpec> param_specs() const override {
    const int64_t D = cfg_.embed_dim, E = cfg_.expand * D, N = cfg_.d_state, R = cfg_.dt_rank, K = cfg_.d_conv;
    const int64_t M0 = grid0_ * grid0_;
    std::vector<ParamSpec> s = {
        {"cls_token", {1, 1, D}},
        {"pos_embed", {1, M0 + 1, D}},
        {"patch_embed.proj.weight", {D, cfg_.channels, cfg_.patch_size, cfg_.patch_size}},
        {"patch_embed.proj.bias", {D}},
        {"norm_f.weight", {D}},
    };
    if (cfg_.num_classes > 0) {
      s.push_back({"head.weight", {cfg_.num_classes, D}});
      s.push_back({"head.bias", {cfg_.num_classes}});
    }
    for (int64_t i = 0; i < cfg_.depth; ++i) {
      std::string p = "layers." + std::to_string(i) + ".";
      s.push_back({p + "norm.weight", {D}});
      s.push_back({p + "mixer.in_proj.weight", {2 * E, D}});
      s.push_back({p + "mixer.out_proj.weight", {D, E}});
      for (const char* sfx : {"", "_b"}) {
        std::string q = std::string(sfx);
        s.push_back({p + "mixer.A" + q + "_log", {E, N}});
        s.push_back({p + "mixer.D" + q, {E}});
        s.push_back({p + "mixer.conv1d" + q + ".weight", {E, 1, K}});
        s.push_back({p + "mixer.conv1d" + q + ".bias", {E}});
        s.push_back({p + "mixer.x_proj" + q + ".weight", {R + 2 * N, E}});
        s.push_back({p + "mixer.dt_proj" + q + ".weight", {E, R}});
        s.push_back({p + "mixer.dt_proj" + q + ".bias", {E}});
      }
    }
    return s;
  }

  void bind(const TensorMap& w) override {
    w_ = w;
    const int64_t D = cfg_.embed_dim, E = cfg_.expand * D;
    layers_.resize(static_cast<size_t>(cfg_.depth));
    for (int64_t i = 0; i < cfg_.depth; ++i) {
      std::string p = "layers." + std::to_string(i) + ".";
      Layer& L = layers_[static_cast<size_t>(i)];
      L.norm = f(p + "norm.weight");
      ssm::BiMambaWeights& m = L.mixer;
      m.d_model = D;
      m.d_inner = E;
      m.d_state = cfg_.d_state;
      m.dt_rank = cfg_.dt_rank;
      m.d_conv = cfg_.d_conv;
      m.divide_out = cfg_.divide_out;
      m.in_proj = f(p + "mixer.in_proj.weight");
      m.out_proj = f(p + "mixer.out_proj.weight");
      for (int k = 0; k < 2; ++k) {
        std::string q = k ? "_b" : "";
        ssm::MambaDirectionWeights& d = k ? m.bwd : m.fwd;
        d.conv_w = f(p + "mixer.conv1d" + q + ".weight");
        d.conv_b = f(p + "mixer.conv1d" + q + ".bias");
        d.x_proj = f(p + "mixer.x_proj" + q + ".weight");
        d.dt_proj_w = f(p + "mixer.dt_proj" + q + ".weight");
        d.dt_proj_b = f(p + "mixer.dt_proj" + q + ".bias");
        d.D = f(p + "mixer.D" + q);
        const Tensor& alog = w_.at(p + "mixer.A" + q + "_log");
        d.A = Tensor::empty(alog.shape());
        for (int64_t j = 0; j < alog.numel(); ++j) d.A.f32()[j] = -std::exp(alog.f32()[j]);
      }
    }
  }

  std::map<std::string, Tensor> forward(const Tensor& x, const Policy& policy, const Wanted& want) const override {
    const int64_t B = x.dim(0), H = x.dim(2), W = x.dim(3);
    const int64_t D = cfg_.embed_dim, P = cfg_.patch_size, S = cfg_.stride;
    MAMBACV_CHECK(H >= P && W >= P, "input: Vim with patch " << P << " needs images of at least " << P << "x" << P
                                                            << " pixels, got " << H << "x" << W);
    const int64_t gh = (H - P) / S + 1, gw = (W - P) / S + 1, M = gh * gw, T = M + 1, cls_pos = M / 2;
    std::map<std::string, Tensor> out;

    // patch_embed: (B, 3, H, W) -> NHWC -> conv k=P stride S -> tokens (B, M, D) in raster order
    Tensor xh = Tensor::empty({B, H, W, 3});
    ops::nchw_to_nhwc(x.f32(), B, 3, H * W, xh.f32());
    Tensor patches = Tensor::empty({B, M, D});
    ops::conv2d_nhwc(xh.f32(), B, H, W, 3, f("patch_embed.proj.weight"), f("patch_embed.proj.bias"), D,
                     static_cast<int>(P), static_cast<int>(P), static_cast<int>(S), static_cast<int>(S), 0, 0,
                     patches.f32());
    if (want.has("patch_embed")) out["patch_embed"] = patches.clone();

    // tokens (B, T, D): [t_0 .. t_{M/2-1}, cls, t_{M/2} ..] + pos_embed (interpolated to the grid if needed)
    Tensor pos = position_embedding(gh, gw);  // (T, D)
    Tensor residual = Tensor::empty({B, T, D});
    {
      const float* pe = patches.f32();
      const float* cls = f("cls_token");
      const float* pp = pos.f32();
      float* r = residual.f32();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
          const float* src = t < cls_pos ? pe + (b * M + t) * D : t == cls_pos ? cls : pe + (b * M + t - 1) * D;
          float* dst = r + (b * T + t) * D;
          for (int64_t c = 0; c < D; ++c) dst[c] = src[c] + pp[t * D + c];
        }
    }

    // layers: residual stream in fp32; h = Mixer(RMSNorm(residual)); residual += h (first layer: residual = x)
    Tensor normed = Tensor::empty({B, T, D});
    Tensor h = Tensor::empty({B, T, D});
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (i > 0) ops::add_inplace(residual.f32(), h.f32(), B * T * D);
      ops::rms_norm(residual.f32(), B * T, D, layers_[i].norm, static_cast<float>(cfg_.norm_eps), normed.f32());
      ssm::bimamba_v2_forward(normed.f32(), B, T, layers_[i].mixer, policy, h.f32());
      if (i == 0 && want.has("layers.0.mixer")) out["layers.0.mixer"] = h.clone();
    }
    ops::add_inplace(residual.f32(), h.f32(), B * T * D);
    ops::rms_norm(residual.f32(), B * T, D, f("norm_f.weight"), static_cast<float>(cfg_.norm_eps), normed.f32());

    // features: the class token (B, D); tokens: the normed token map (B, D, gh, gw)
    Tensor feat = Tensor::empty({B, D});
    for (int64_t b = 0; b < B; ++b)
      std::copy(normed.f32() + (b * T + cls_pos) * D, normed.f32() + (b * T + cls_pos + 1) * D, feat.f32() + b * D);
    if (want.has("features")) out["features"] = feat;
    if (want.has("api_features")) {
      out["cls"] = feat;
      Tensor tok = Tensor::empty({B, M, D});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0, m = 0; t < T; ++t) {
          if (t == cls_pos) continue;
          std::copy(normed.f32() + (b * T + t) * D, normed.f32() + (b * T + t + 1) * D, tok.f32() + (b * M + m) * D);
          ++m;
        }
      Tensor map = Tensor::empty({B, D, gh, gw});
      ops::nhwc_to_nchw(tok.f32(), B, M, D, map.f32());
      out["tokens"] = map;
    }
    if ((want.has("logits")) && cfg_.num_classes > 0) {
      Tensor logits = Tensor::empty({B, cfg_.num_classes});
      ops::linear(feat.f32(), B, D, f("head.weight"), f("head.bias"), cfg_.num_classes, logits.f32());
      out["logits"] = logits;
    }
    return out;
  }

 private:
  struct Layer {
    const float* norm = nullptr;
    ssm::BiMambaWeights mixer;
  };

  const float* f(const std::string& n) const {
    auto it = w_.find(n);
    MAMBACV_CHECK(it != w_.end(), "vim: weight " << n << " was not bound");
    return it->second.f32();
  }

  // (T, D) position embedding for a gh x gw grid: the configured (grid0 x grid0) table with its class row taken
  // out, resized bicubically (align_corners=False) when the grid differs, and the class row put back at M/2.
  Tensor position_embedding(int64_t gh, int64_t gw) const {
    const int64_t D = cfg_.embed_dim, M0 = grid0_ * grid0_, M = gh * gw;
    const float* pe = f("pos_embed");
    Tensor out = Tensor::empty({M + 1, D});
    if (gh == grid0_ && gw == grid0_) {
      std::copy(pe, pe + (M0 + 1) * D, out.f32());
      return out;
    }
    const int64_t c0 = M0 / 2, c1 = M / 2;
    Tensor grid = Tensor::empty({M0, D});
    std::copy(pe, pe + c0 * D, grid.f32());
    std::copy(pe + (c0 + 1) * D, pe + (M0 + 1) * D, grid.f32() + c0 * D);
    Tensor resized = Tensor::empty({M, D});
    ops::resize_bicubic_hwc(grid.f32(), grid0_, grid0_, D, gh, gw, resized.f32());
    std::copy(resized.f32(), resized.f32() + c1 * D, out.f32());
    std::copy(pe + c0 * D, pe + (c0 + 1) * D, out.f32() + c1 * D);
    std::copy(resized.f32() + c1 * D, resized.f32() + M * D, out.f32() + (c1 + 1) * D);
    return out;
  }

  VimConfig cfg_;
  std::string name_;
  std::string arch_ = "vim";
  int64_t grid0_ = 0;
  TensorMap w_;
  std::vector<Layer> layers_;
};

}  // namespace

std::unique_ptr<Network> make_vim_network(const ModelConfig& mc) { return std::make_unique<VimNetwork>(mc); }

}  // namespace mambacv::detail
