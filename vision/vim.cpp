// Vim (Vision Mamba), bidirectional "v2" blocks, middle class token, absolute position embedding.
// Mirrors hustvl/Vim vim/models_mamba.py VisionMamba.forward_features / forward (MODELS.md §2).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

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
  // VisionMamba's constructor kwargs (upstream spelling), the vim_base factory's misspelling, and wrapper keys; a
  // key outside them is an error, so a typo never falls back to a default silently
  static const std::set<std::string> kKnown = {
      "img_size", "patch_size", "stride", "depth", "embed_dim", "d_state", "channels", "num_classes", "ssm_cfg",
      "drop_rate", "drop_path_rate", "norm_epsilon", "rms_norm", "initializer_cfg", "fused_add_norm",
      "residual_in_fp32", "device", "dtype", "ft_seq_len", "pt_hw_seq_len", "if_bidirectional", "final_pool_type",
      "if_abs_pos_embed", "if_rope", "if_rope_residual", "flip_img_sequences_ratio", "if_bimamba", "bimamba_type",
      "if_cls_token", "if_divide_out", "if_devide_out", "init_layer_scale", "use_double_cls_token",
      "use_middle_cls_token", "type", "arch", "init_cfg", "pretrained"};
  for (const auto& [key, value] : r.raw().items()) {
    if (kKnown.count(key)) continue;
    std::string known;
    for (const auto& k : kKnown) known += (known.empty() ? "" : ", ") + k;
    MAMBACV_FAIL(r.where() << ": unknown Vim config key \"" << key << "\" (known keys: " << known << ")");
  }
  // these change the architecture and are not implemented: only their defaults are accepted
  MAMBACV_CHECK(!r.has("init_layer_scale"), r.where() << ": \"init_layer_scale\" is not supported (only null)");
  MAMBACV_CHECK(!r.has("ssm_cfg") || (r.raw()["ssm_cfg"].is_object() && r.raw()["ssm_cfg"].empty()),
                r.where() << ": \"ssm_cfg\" is not supported (only null or {})");
  r.require_bool("if_bimamba", false);
  VimConfig c;
  c.img_size = r.get_int("img_size", 224, 1, kMaxImage);
  c.patch_size = r.get_int("patch_size", 16, 1, 64);
  c.stride = r.get_int("stride", c.patch_size, 1, 64);
  c.embed_dim = r.get_int("embed_dim", 192, 1, kMaxWidth / 2);  // the mixer is 2 x embed_dim wide
  c.depth = r.get_int("depth", 24, 1, kMaxDepth);
  c.d_state = r.get_int("d_state", 16, 1, 256);
  c.num_classes = r.get_int("num_classes", 1000, 0, kMaxClasses);
  c.channels = r.get_int("channels", 3);
  c.norm_eps = r.get_double("norm_epsilon", 1e-5, 1e-12, 1.0);
  // VisionMamba's keyword is "if_divide_out", default true; upstream's vim_base factory passes the misspelling
  // "if_devide_out", which is accepted here as the same key
  c.divide_out = r.get_bool("if_divide_out", r.get_bool("if_devide_out", true));
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

  void bind(TensorMap weights, DType gemm_storage) override {
    WeightTable w("vim", std::move(weights), gemm_storage);
    const int64_t D = cfg_.embed_dim, E = cfg_.expand * D;
    const int S = static_cast<int>(cfg_.stride);
    patch_embed_ = w.conv("patch_embed.proj.weight", "patch_embed.proj.bias", S, S, 0, 0);
    cls_token_ = w.at("cls_token").reshape({D});
    pos_embed_ = w.at("pos_embed").reshape({grid0_ * grid0_ + 1, D});
    norm_f_ = w.at("norm_f.weight");
    if (cfg_.num_classes > 0) head_ = w.linear("head.weight", "head.bias");
    layers_.resize(static_cast<size_t>(cfg_.depth));
    for (int64_t i = 0; i < cfg_.depth; ++i) {
      std::string p = "layers." + std::to_string(i) + ".";
      Layer& L = layers_[static_cast<size_t>(i)];
      L.norm = w.at(p + "norm.weight");
      ssm::BiMambaWeights& m = L.mixer;
      m.d_model = D;
      m.d_inner = E;
      m.d_state = cfg_.d_state;
      m.dt_rank = cfg_.dt_rank;
      m.d_conv = cfg_.d_conv;
      m.divide_out = cfg_.divide_out;
      m.in_proj = w.linear(p + "mixer.in_proj.weight");
      m.out_proj = w.linear(p + "mixer.out_proj.weight");
      for (int k = 0; k < 2; ++k) {
        std::string q = k ? "_b" : "";
        ssm::MambaDirectionWeights& d = k ? m.bwd : m.fwd;
        d.conv = w.depthwise(p + "mixer.conv1d" + q + ".weight", p + "mixer.conv1d" + q + ".bias");
        d.x_proj = w.linear(p + "mixer.x_proj" + q + ".weight");
        d.dt_proj_b = w.at(p + "mixer.dt_proj" + q + ".bias");
        d.D = w.at(p + "mixer.D" + q);
        ssm::prepare_direction(d, w.at(p + "mixer.A" + q + "_log"), w.at(p + "mixer.dt_proj" + q + ".weight"),
                               gemm_storage);
        w.erase(p + "mixer.dt_proj" + q + ".weight");
      }
    }
  }

  std::map<std::string, Tensor> forward(const ExecContext& ctx, const ForwardCall& call) const override {
    const Tensor& x = call.x;
    const Wanted& want = call.wanted;
    const int64_t B = x.dim(0), H = x.dim(2), W = x.dim(3);
    const int64_t D = cfg_.embed_dim, P = cfg_.patch_size, S = cfg_.stride;
    MAMBACV_CHECK(H >= P && W >= P, "input: Vim with patch " << P << " needs images of at least " << P << "x" << P
                                                            << " pixels, got " << H << "x" << W);
    const int64_t gh = (H - P) / S + 1, gw = (W - P) / S + 1, M = gh * gw, T = M + 1, cls_pos = M / 2;
    std::map<std::string, Tensor> out;

    // patch_embed: (B, 3, H, W) -> NHWC -> conv k=P stride S -> tokens (B, M, D) in raster order
    ctx.stage("patch_embed");
    const detail::Policy& policy = call.policy;
    policy.scope("patch_embed");
    Tensor pixels = ops::nchw_to_nhwc(ctx, x);
    policy.apply(ctx, Boundary::Activation, pixels);  // the input in the compute dtype, as a cast model reads it
    Tensor patches = ops::conv2d(ctx, pixels, patch_embed_).reshape({B, M, D});
    policy.apply(ctx, Boundary::Activation, patches);
    if (want.has("patch_embed")) out["patch_embed"] = patches.clone();

    // tokens (B, T, D): [t_0 .. t_{M/2-1}, cls, t_{M/2} ..] + pos_embed (interpolated to the grid if needed)
    const std::shared_ptr<const Tensor> pos =
        pos_cache_.get({gh, gw}, [&] { return position_embedding(ExecContext::cpu(ctx.threads), gh, gw); });
    Tensor residual = ops::insert_token_add(ctx, patches, cls_token_, cls_pos, *pos);
    policy.apply(ctx, Boundary::Activation, residual);

    // layers: residual stream in fp32; h = Mixer(RMSNorm(residual)); residual += h (first layer: residual = x);
    // then norm_f. Images are independent here, so the layers run over groups of images (residual, normed:
    // (g, T, D) row slices) whose activations stay in cache; the widest is in_proj's (T, 2 * d_inner) output.
    Tensor normed = ctx.empty({B, T, D});
    Tensor first_mixer = want.has("layers.0.mixer") ? ctx.empty({B, T, D}) : Tensor();
    const int64_t group = images_per_group(call.batch_group, B, T * 2 * cfg_.expand * D * 4);
    for (int64_t b0 = 0; b0 < B; b0 += group) {
      const int64_t b1 = std::min(B, b0 + group);
      Tensor res = residual.slice0(b0, b1), nrm = normed.slice0(b0, b1);
      Tensor h;
      for (size_t i = 0; i < layers_.size(); ++i) {
        ctx.stage("layers");
        policy.scope("layers." + std::to_string(i));
        if (i > 0) {
          ops::add(ctx, res, h, policy.rounding(Boundary::ResidualStream));
          policy.check(ctx, Boundary::ResidualStream, res);
        }
        ops::rms_norm(ctx, res, layers_[i].norm, static_cast<float>(cfg_.norm_eps), nrm,
                      policy.rounding(Boundary::Activation));
        policy.check(ctx, Boundary::Activation, nrm);
        h = ssm::bimamba_v2_forward(ctx, nrm, layers_[i].mixer, policy);
        if (i == 0 && first_mixer.defined()) std::memcpy(first_mixer.slice0(b0, b1).f32(), h.f32(), h.nbytes());
      }
      ctx.stage("head");
      policy.scope("head");
      ops::add(ctx, res, h, policy.rounding(Boundary::ResidualStream));
      policy.check(ctx, Boundary::ResidualStream, res);
      ops::rms_norm(ctx, res, norm_f_, static_cast<float>(cfg_.norm_eps), nrm, policy.rounding(Boundary::Activation));
      policy.check(ctx, Boundary::Activation, nrm);
    }
    if (first_mixer.defined()) out["layers.0.mixer"] = first_mixer;

    // features: the class token (B, D); tokens: the normed token map (B, D, gh, gw)
    Tensor feat = ops::take_token(ctx, normed, cls_pos);
    if (want.has("features")) out["features"] = feat;
    if (want.has("api_features")) {
      out["cls"] = feat;
      out["tokens"] = ops::nhwc_to_nchw(ctx, ops::drop_token(ctx, normed, cls_pos).reshape({B, gh, gw, D}));
    }
    if (want.has("logits") && cfg_.num_classes > 0) {
      Tensor logits = ctx.empty({B, cfg_.num_classes});
      policy.linear(ctx, Boundary::Head, feat, head_, logits);
      out["logits"] = logits;
    }
    return out;
  }

 private:
  struct Layer {
    Tensor norm;
    ssm::BiMambaWeights mixer;
  };

  // (T, D) position embedding for a gh x gw grid: the configured (grid0 x grid0) table with its class row taken
  // out, resized bicubically (align_corners=False) when the grid differs, and the class row put back at M/2.
  Tensor position_embedding(const ExecContext& ctx, int64_t gh, int64_t gw) const {
    const int64_t D = cfg_.embed_dim, M0 = grid0_ * grid0_, M = gh * gw;
    if (gh == grid0_ && gw == grid0_) return pos_embed_;
    const int64_t c0 = M0 / 2, c1 = M / 2;
    Tensor table = pos_embed_.reshape({1, M0 + 1, D});
    Tensor grid = ops::drop_token(ctx, table, c0).reshape({grid0_, grid0_, D});
    Tensor resized = ops::resize_bicubic(ctx, grid, gh, gw).reshape({1, M, D});
    Tensor cls_row = ops::take_token(ctx, table, c0).reshape({D});
    // insert_token_add with a zero table: the resized grid with the class row at c1
    return ops::insert_token_add(ctx, resized, cls_row, c1, Tensor::zeros({M + 1, D})).reshape({M + 1, D});
  }

  VimConfig cfg_;
  std::string name_;
  std::string arch_ = "vim";
  int64_t grid0_ = 0;
  ops::Conv2dWeight patch_embed_;
  Tensor cls_token_, pos_embed_, norm_f_;  // (D), (M0 + 1, D), (D)
  ops::PackedWeight head_;
  std::vector<Layer> layers_;
  mutable ShapeCache<std::pair<int64_t, int64_t>, Tensor> pos_cache_;  // (gh, gw) -> (T, D)
};

}  // namespace

std::unique_ptr<Network> make_vim_network(const ModelConfig& mc) { return std::make_unique<VimNetwork>(mc); }

}  // namespace mambacv::detail
