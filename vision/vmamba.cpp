// VMamba: VSSM (arch "vmamba", classifier) and Backbone_VSSM (arch "vmamba_backbone", detection features).
// Mirrors MzeroMiko/VMamba classification/models/vmamba.py VSSM / Backbone_VSSM / VSSBlock / PatchMerging2D /
// _make_patch_embed(_v2) / _make_downsample(_v3) (MODELS.md §3.2, §3.5); the mixer is ssm/ss2d.h.
//
// Internally every map is channels-last (B, H, W, C), whatever the config's norm_layer: "ln" and "ln2d" are the
// same LayerNorm over C and differ only in upstream's tensor layout, so only outputs are transposed (intermediate
// goldens keep the upstream module's layout: NHWC for ln, NCHW for ln2d; API features are always NCHW).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "ssm/ss2d.h"
#include "vision/config_util.h"
#include "vision/cross_scan.h"
#include "vision/network.h"

namespace mambacv::detail {
namespace {

constexpr float kLnEps = 1e-5f;
constexpr int64_t kMlpChunkBytes = int64_t{1} << 20;  // hidden activations per MLP chunk (f32)
constexpr int64_t kK = ssm::kSS2DDirections;

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

struct VMambaConfig {
  bool backbone = false;
  std::vector<int64_t> depths, dims;
  int64_t patch_size = 4, num_classes = 1000, img_size = 224;
  int64_t d_state = 16, dt_rank = -1 /* auto */, d_conv = 3;
  double ssm_ratio = 2.0, mlp_ratio = 4.0;
  bool conv_bias = true;
  ssm::SS2DForwardType forward_type;
  std::string downsample = "v2", patchembed = "v1", norm = "ln";
  std::vector<int64_t> out_indices;

  int64_t stages() const { return static_cast<int64_t>(depths.size()); }
  int64_t d_inner(int64_t i) const { return static_cast<int64_t>(ssm_ratio * static_cast<double>(dims[i])); }
  int64_t rank(int64_t i) const { return dt_rank > 0 ? dt_rank : (dims[i] + 15) / 16; }
  int64_t mlp_hidden(int64_t i) const { return static_cast<int64_t>(static_cast<double>(dims[i]) * mlp_ratio); }
  bool channel_first() const { return norm == "ln2d"; }
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

VMambaConfig parse_vmamba(const ModelConfig& mc, bool backbone) {
  ConfigReader r(mc);
  const std::string where = r.where();
  // Every upstream VSSM / Backbone_VSSM kwarg; the training-only ones are accepted and ignored.
  static const std::set<std::string> kKnown = {
      "patch_size", "in_chans", "num_classes", "depths", "dims", "ssm_d_state", "ssm_ratio", "ssm_dt_rank",
      "ssm_act_layer", "ssm_conv", "ssm_conv_bias", "ssm_drop_rate", "ssm_init", "forward_type", "mlp_ratio",
      "mlp_act_layer", "mlp_drop_rate", "gmlp", "drop_path_rate", "patch_norm", "norm_layer", "downsample_version",
      "patchembed_version", "use_checkpoint", "posembed", "imgsize", "img_size", "out_indices", "pretrained",
      // mmdetection / wrapper keys that may sit beside the kwargs
      "type", "arch", "init_cfg"};
  for (const auto& [key, value] : r.raw().items()) {
    if (kKnown.count(key)) continue;
    std::string known;
    for (const auto& k : kKnown) known += (known.empty() ? "" : ", ") + k;
    MAMBACV_FAIL(where << ": unknown VMamba config key \"" << key << "\" (known keys: " << known << ")");
  }

  VMambaConfig c;
  c.backbone = backbone;
  // Bounds (here and below) leave room around the released models (dims 96-128 doubling over 4 stages, depths up
  // to 27 blocks, d_state 1-16, ssm_ratio 1-2, mlp_ratio 0-4, patch 4, 224-pixel configs) and keep every derived
  // size far from int64 overflow; Network construction then checks the total parameter count.
  c.depths = r.get_int_list("depths", {2, 2, 9, 2}, 0, kMaxDepth);
  MAMBACV_CHECK(!c.depths.empty() && c.depths.size() <= 8,
                where << ": \"depths\" must be a list of 1 to 8 stage block counts, got " << c.depths.size());
  const int64_t S = c.stages();
  c.dims = r.get_int_list("dims", {96, 192, 384, 768}, 1, kMaxWidth);
  if (r.has("dims") && r.raw()["dims"].is_number_integer()) {
    const int64_t d = c.dims[0];
    c.dims.clear();
    for (int64_t i = 0; i < S; ++i) c.dims.push_back(d << i);
  }
  MAMBACV_CHECK(static_cast<int64_t>(c.dims.size()) == S,
                where << ": \"dims\" has " << c.dims.size() << " entries but \"depths\" has " << S);
  for (int64_t d : c.dims) r.check_range("dims", static_cast<double>(d), 1, kMaxWidth);
  c.patch_size = r.get_int("patch_size", 4, 1, 64);
  MAMBACV_CHECK(r.get_int("in_chans", 3) == 3, where << ": \"in_chans\" must be 3 (RGB input)");
  c.num_classes = backbone ? 0 : r.get_int("num_classes", 1000, 0, kMaxClasses);
  c.img_size = r.get_int("img_size", r.get_int("imgsize", 224, 1, kMaxImage), 1, kMaxImage);

  c.d_state = r.get_int("ssm_d_state", 16, 1, 256);
  c.ssm_ratio = r.get_double("ssm_ratio", 2.0);
  MAMBACV_CHECK(c.ssm_ratio > 0, where << ": \"ssm_ratio\" " << c.ssm_ratio
                                       << " is not supported (a VSSBlock without its SS2D branch); use > 0");
  r.check_range("ssm_ratio", c.ssm_ratio, 0, 16);
  c.dt_rank = r.get_int_or_auto("ssm_dt_rank", -1, -1);
  MAMBACV_CHECK(c.dt_rank == -1 || (c.dt_rank >= 1 && c.dt_rank <= kMaxWidth),
                where << ": \"ssm_dt_rank\" must be \"auto\" or in [1, " << kMaxWidth << "], got " << c.dt_rank);
  c.d_conv = r.get_int("ssm_conv", 3, 1, 31);
  c.conv_bias = r.get_bool("ssm_conv_bias", true);
  c.mlp_ratio = r.get_double("mlp_ratio", 4.0, 0, 16);
  for (int64_t d : c.dims) {  // upstream's int(ssm_ratio * dim) and int(dim * mlp_ratio)
    MAMBACV_CHECK(static_cast<int64_t>(c.ssm_ratio * static_cast<double>(d)) >= 1,
                  where << ": \"ssm_ratio\" " << c.ssm_ratio << " gives an SS2D width of 0 for dim " << d);
    MAMBACV_CHECK(c.mlp_ratio == 0 || static_cast<int64_t>(c.mlp_ratio * static_cast<double>(d)) >= 1,
                  where << ": \"mlp_ratio\" " << c.mlp_ratio << " gives an MLP width of 0 for dim " << d);
  }
  MAMBACV_CHECK(c.d_conv >= 1 && (c.d_conv == 1 || c.d_conv % 2 == 1),
                where << ": \"ssm_conv\" must be 1 (no conv) or an odd kernel size, got " << c.d_conv);
  c.forward_type = ssm::parse_ss2d_forward_type(r.get_string("forward_type", "v2"), where);

  c.norm = lower(r.get_string("norm_layer", "ln"));
  MAMBACV_CHECK(c.norm == "ln" || c.norm == "ln2d",
                where << ": \"norm_layer\" \"" << r.get_string("norm_layer", "") << "\" is not supported (supported: ln, ln2d)");
  c.downsample = r.get_string("downsample_version", "v2");
  MAMBACV_CHECK(c.downsample == "v1" || c.downsample == "v2" || c.downsample == "v3",
                where << ": \"downsample_version\" \"" << c.downsample << "\" is not supported (supported: v1, v2, v3)");
  c.patchembed = r.get_string("patchembed_version", "v1");
  MAMBACV_CHECK(c.patchembed == "v1" || c.patchembed == "v2",
                where << ": \"patchembed_version\" \"" << c.patchembed << "\" is not supported (supported: v1, v2)");
  MAMBACV_CHECK(c.patchembed == "v1" || c.patch_size >= 2,
                where << ": patchembed_version v2 needs \"patch_size\" >= 2, got " << c.patch_size);
  MAMBACV_CHECK(lower(r.get_string("ssm_act_layer", "silu")) == "silu",
                where << ": \"ssm_act_layer\" must be \"silu\" (the only activation implemented)");
  MAMBACV_CHECK(lower(r.get_string("mlp_act_layer", "gelu")) == "gelu",
                where << ": \"mlp_act_layer\" must be \"gelu\" (the only activation implemented)");
  r.require_bool("gmlp", false);
  r.require_bool("patch_norm", true);
  r.require_bool("posembed", false);
  if (c.forward_type.v0) {
    // upstream SS2Dv0 hard-codes a 3x3 depthwise conv with bias and asserts channel_first is False
    MAMBACV_CHECK(!c.channel_first(), where << ": forward_type \"v0\" needs norm_layer \"ln\" (upstream SS2Dv0 "
                                                 "asserts channel_first is False)");
    c.d_conv = 3;
    c.conv_bias = true;
  }

  if (backbone) {
    c.out_indices = r.get_int_list("out_indices", {0, 1, 2, 3});
    std::set<int64_t> seen;
    for (int64_t i : c.out_indices) {
      MAMBACV_CHECK(i >= 0 && i < S && seen.insert(i).second,
                    where << ": \"out_indices\" must hold distinct stage indices in [0, " << S << "), got " << i);
    }
  }
  return c;
}

// One VSSBlock's bound weights.
struct Block {
  Tensor norm_w, norm_b;
  ssm::SS2DWeights op;
  Tensor norm2_w, norm2_b;
  ops::PackedWeight fc1, fc2;  // with their biases
};

// A conv (+ LayerNorm over its output channels) of the patch embedding or a downsample.
struct ConvLn {
  ops::Conv2dWeight conv;
  Tensor ln_w, ln_b;
};

class VMambaNetwork final : public Network {
 public:
  VMambaNetwork(const ModelConfig& mc, bool backbone)
      : cfg_(parse_vmamba(mc, backbone)), arch_(backbone ? "vmamba_backbone" : "vmamba") {}

  const std::string& arch() const override { return arch_; }
  int input_size() const override { return static_cast<int>(cfg_.img_size); }
  int num_classes() const override { return static_cast<int>(cfg_.num_classes); }

  std::vector<ParamSpec> param_specs() const override {
    const VMambaConfig& c = cfg_;
    std::vector<ParamSpec> s;
    auto ln = [&](const std::string& p, int64_t C) {
      s.push_back({p + ".weight", {C}});
      s.push_back({p + ".bias", {C}});
    };
    const int64_t C0 = c.dims[0];
    if (c.patchembed == "v1") {
      s.push_back({"patch_embed.0.weight", {C0, 3, c.patch_size, c.patch_size}});
      s.push_back({"patch_embed.0.bias", {C0}});
      ln("patch_embed.2", C0);
    } else {
      const int64_t k = c.patch_size / 2 + 1;
      s.push_back({"patch_embed.0.weight", {C0 / 2, 3, k, k}});
      s.push_back({"patch_embed.0.bias", {C0 / 2}});
      ln("patch_embed.2", C0 / 2);
      s.push_back({"patch_embed.5.weight", {C0, C0 / 2, k, k}});
      s.push_back({"patch_embed.5.bias", {C0}});
      ln("patch_embed.7", C0);
    }
    for (int64_t i = 0; i < c.stages(); ++i) {
      const int64_t C = c.dims[i], Dd = c.d_inner(i), R = c.rank(i), N = c.d_state, Hm = c.mlp_hidden(i);
      for (int64_t j = 0; j < c.depths[i]; ++j) {
        const std::string p = "layers." + std::to_string(i) + ".blocks." + std::to_string(j) + ".";
        ln(p + "norm", C);
        s.push_back({p + "op.in_proj.weight", {c.forward_type.with_z ? 2 * Dd : Dd, C}});
        if (c.d_conv > 1) {
          s.push_back({p + "op.conv2d.weight", {Dd, 1, c.d_conv, c.d_conv}});
          if (c.conv_bias) s.push_back({p + "op.conv2d.bias", {Dd}});
        }
        s.push_back({p + "op.x_proj_weight", {kK, R + 2 * N, Dd}});
        s.push_back({p + "op.A_logs", {kK * Dd, N}});
        s.push_back({p + "op.Ds", {kK * Dd}});
        s.push_back({p + "op.dt_projs_weight", {kK, Dd, R}});
        s.push_back({p + "op.dt_projs_bias", {kK, Dd}});
        ln(p + "op.out_norm", Dd);
        s.push_back({p + "op.out_proj.weight", {C, Dd}});
        if (c.mlp_ratio > 0) {
          ln(p + "norm2", C);
          s.push_back({p + "mlp.fc1.weight", {Hm, C}});
          s.push_back({p + "mlp.fc1.bias", {Hm}});
          s.push_back({p + "mlp.fc2.weight", {C, Hm}});
          s.push_back({p + "mlp.fc2.bias", {C}});
        }
      }
      if (i + 1 < c.stages()) {
        const std::string p = "layers." + std::to_string(i) + ".downsample.";
        const int64_t Co = c.dims[i + 1];
        if (c.downsample == "v1") {
          ln(p + "norm", 4 * C);
          s.push_back({p + "reduction.weight", {Co, 4 * C}});
        } else {
          const int64_t k = c.downsample == "v2" ? 2 : 3;
          s.push_back({p + "1.weight", {Co, C, k, k}});
          s.push_back({p + "1.bias", {Co}});
          ln(p + "3", Co);
        }
      }
    }
    if (c.backbone) {
      for (int64_t i : c.out_indices) ln("outnorm" + std::to_string(i), c.dims[i]);
    } else {
      ln("classifier.norm", c.dims.back());
      if (c.num_classes > 0) {
        s.push_back({"classifier.head.weight", {c.num_classes, c.dims.back()}});
        s.push_back({"classifier.head.bias", {c.num_classes}});
      }
    }
    return s;
  }

  // Alternative upstream spellings -> the canonical names / shapes of param_specs():
  //  - root vmamba.py: op.x_proj.weight (K*(R+2N), Dd) and op.dt_projs.weight (K*Dd, R) (grouped Linear layers);
  //  - Linear2d / 1x1-conv weights (O, I, 1, 1) -> (O, I);
  //  - the names upstream VSSM._load_from_state_dict renames (patch_embed.proj/norm, ln_1, self_attention,
  //    root norm / head of older checkpoints);
  //  - backbones drop classifier.* (upstream Backbone_VSSM deletes its classifier and loads classification
  //    checkpoints into the rest).
  //  - backbones given an mmdetection checkpoint keep only its backbone.* tensors (prefix stripped);
  //  - backbones given a classification checkpoint (it has classifier.*) get identity outnorm{i} where the
  //    checkpoint has none, as upstream Backbone_VSSM(pretrained=...) leaves them at their initialisation.
  TensorMap canonicalize(const TensorMap& w) const override {
    TensorMap out;
    std::map<std::string, std::string> origin;
    bool mmdet = false, classification = false;
    if (cfg_.backbone)
      for (const auto& kv : w) mmdet = mmdet || starts_with(kv.first, "backbone.");
    for (const auto& [name, t0] : w) {
      std::string n = name;
      if (mmdet) {
        if (!starts_with(n, "backbone.")) continue;
        n = n.substr(std::string("backbone.").size());
      }
      Tensor t = t0;
      auto replace_prefix = [&](const std::string& from, const std::string& to) {
        if (starts_with(n, from)) n = to + n.substr(from.size());
      };
      auto replace_inner = [&](const std::string& from, const std::string& to) {
        size_t pos = n.find(from);
        if (pos != std::string::npos) n = n.substr(0, pos) + to + n.substr(pos + from.size());
      };
      replace_prefix("patch_embed.proj.", "patch_embed.0.");
      replace_prefix("patch_embed.norm.", "patch_embed.2.");
      replace_prefix("norm.", "classifier.norm.");
      replace_prefix("head.", "classifier.head.");
      if (starts_with(n, "layers.")) {
        replace_inner(".ln_1.", ".norm.");
        replace_inner(".self_attention.", ".op.");
      }
      if (ends_with(n, ".op.x_proj.weight") && t.ndim() == 2 && t.dim(0) % kK == 0) {
        n = n.substr(0, n.size() - std::string("x_proj.weight").size()) + "x_proj_weight";
        t = t.reshape({kK, t.dim(0) / kK, t.dim(1)});
      } else if (ends_with(n, ".op.dt_projs.weight") && (t.ndim() == 2 || t.ndim() == 3) && t.dim(0) % kK == 0) {
        n = n.substr(0, n.size() - std::string("dt_projs.weight").size()) + "dt_projs_weight";
        t = t.reshape({kK, t.dim(0) / kK, t.dim(1)});  // (K*Dd, R[, 1]) -> (K, Dd, R)
      } else if (ends_with(n, ".op.dt_projs.bias")) {
        n = n.substr(0, n.size() - std::string("dt_projs.bias").size()) + "dt_projs_bias";
        if (t.ndim() == 1 && t.dim(0) % kK == 0) t = t.reshape({kK, t.dim(0) / kK});
      }
      if (t.ndim() == 4 && t.dim(2) == 1 && t.dim(3) == 1 &&
          (ends_with(n, "in_proj.weight") || ends_with(n, "out_proj.weight") || ends_with(n, "fc1.weight") ||
           ends_with(n, "fc2.weight") || ends_with(n, "reduction.weight") || ends_with(n, "head.weight")))
        t = t.reshape({t.dim(0), t.dim(1)});
      if (cfg_.backbone && starts_with(n, "classifier.")) {
        classification = true;
        continue;
      }
      auto prev = origin.find(n);
      MAMBACV_CHECK(prev == origin.end(), "weights: tensors \"" << prev->second << "\" and \"" << name
                                                                << "\" both give \"" << n << "\"; keep one spelling");
      origin[n] = name;
      out[n] = t;
    }
    if (classification)
      for (int64_t i : cfg_.out_indices) {
        const std::string p = "outnorm" + std::to_string(i);
        if (out.count(p + ".weight") || out.count(p + ".bias")) continue;
        Tensor g = Tensor::empty({cfg_.dims[static_cast<size_t>(i)]});
        g.fill(1.0f);
        out[p + ".weight"] = g;
        out[p + ".bias"] = Tensor::zeros({cfg_.dims[static_cast<size_t>(i)]});
      }
    return out;
  }

  void bind(TensorMap weights, DType gemm_storage) override {
    WeightTable w(arch_, std::move(weights), gemm_storage);
    const VMambaConfig& c = cfg_;
    const int P = static_cast<int>(c.patch_size);
    auto conv_ln = [&](const std::string& conv, const std::string& norm, int s, int pad) {
      ConvLn r;
      r.conv = w.conv(conv + ".weight", conv + ".bias", s, s, pad, pad);
      r.ln_w = w.at(norm + ".weight");
      r.ln_b = w.at(norm + ".bias");
      return r;
    };
    if (c.patchembed == "v1") {
      embed_.push_back(conv_ln("patch_embed.0", "patch_embed.2", P, 0));
    } else {  // Conv k=P/2+1 s=P/2 p=1 -> LN -> GELU -> Conv -> LN
      embed_.push_back(conv_ln("patch_embed.0", "patch_embed.2", P / 2, 1));
      embed_.push_back(conv_ln("patch_embed.5", "patch_embed.7", P / 2, 1));
    }
    blocks_.assign(static_cast<size_t>(c.stages()), {});
    down_.assign(static_cast<size_t>(std::max<int64_t>(c.stages() - 1, 0)), {});
    for (int64_t i = 0; i < c.stages(); ++i) {
      for (int64_t j = 0; j < c.depths[i]; ++j) {
        const std::string p = "layers." + std::to_string(i) + ".blocks." + std::to_string(j) + ".";
        Block b;
        b.norm_w = w.at(p + "norm.weight");
        b.norm_b = w.at(p + "norm.bias");
        ssm::SS2DParams o;
        o.d_model = c.dims[i];
        o.d_inner = c.d_inner(i);
        o.d_state = c.d_state;
        o.dt_rank = c.rank(i);
        o.d_conv = static_cast<int>(c.d_conv);
        o.with_z = c.forward_type.with_z;
        o.out_norm_eps = kLnEps;
        o.in_proj = w.at(p + "op.in_proj.weight").f32();
        if (c.d_conv > 1) {
          o.conv_w = w.at(p + "op.conv2d.weight").f32();
          o.conv_b = c.conv_bias ? w.at(p + "op.conv2d.bias").f32() : nullptr;
        }
        o.x_proj = w.at(p + "op.x_proj_weight").f32();
        o.dt_proj_w = w.at(p + "op.dt_projs_weight").f32();
        o.dt_proj_b = w.at(p + "op.dt_projs_bias").f32();
        o.A_logs = w.at(p + "op.A_logs").f32();
        o.Ds = w.at(p + "op.Ds").f32();
        o.out_norm_w = w.at(p + "op.out_norm.weight").f32();
        o.out_norm_b = w.at(p + "op.out_norm.bias").f32();
        o.out_proj = w.at(p + "op.out_proj.weight").f32();
        b.op = ssm::ss2d_prepare(o, gemm_storage);
        for (const char* n : {"in_proj.weight", "conv2d.weight", "x_proj_weight", "dt_projs_weight", "out_proj.weight"})
          w.erase(p + "op." + n);
        if (c.mlp_ratio > 0) {
          b.norm2_w = w.at(p + "norm2.weight");
          b.norm2_b = w.at(p + "norm2.bias");
          b.fc1 = w.linear(p + "mlp.fc1.weight", p + "mlp.fc1.bias");
          b.fc2 = w.linear(p + "mlp.fc2.weight", p + "mlp.fc2.bias");
        }
        blocks_[static_cast<size_t>(i)].push_back(std::move(b));
      }
      if (i + 1 < c.stages()) {
        const std::string p = "layers." + std::to_string(i) + ".downsample.";
        Downsample& d = down_[static_cast<size_t>(i)];
        if (c.downsample == "v1") {
          d.merge_ln_w = w.at(p + "norm.weight");
          d.merge_ln_b = w.at(p + "norm.bias");
          d.reduction = w.linear(p + "reduction.weight");
        } else if (c.downsample == "v2") {
          d.conv = conv_ln(p + "1", p + "3", 2, 0);
        } else {
          d.conv = conv_ln(p + "1", p + "3", 2, 1);
        }
      }
    }
    if (c.backbone) {
      for (int64_t i : c.out_indices) {
        const std::string n = "outnorm" + std::to_string(i);
        outnorm_[i] = {w.at(n + ".weight"), w.at(n + ".bias")};
      }
    } else {
      cls_norm_w_ = w.at("classifier.norm.weight");
      cls_norm_b_ = w.at("classifier.norm.bias");
      if (c.num_classes > 0) head_ = w.linear("classifier.head.weight", "classifier.head.bias");
    }
  }

  std::map<std::string, Tensor> forward(const ExecContext& ctx, const ForwardCall& call) const override {
    const VMambaConfig& c = cfg_;
    const Tensor& x = call.x;
    const Wanted& want = call.wanted;
    const int64_t B = x.dim(0), Hin = x.dim(2), Win = x.dim(3);
    MAMBACV_CHECK(Hin >= 32 && Win >= 32, "input: VMamba needs images of at least 32x32 pixels, got " << Hin << "x"
                                                                                                  << Win);
    // "*" (forward_all) gives the goldens' module layouts; an explicit "api_features" gives NCHW stage maps.
    const bool api = want.names.count("api_features") > 0;
    std::map<std::string, Tensor> out;
    auto emit_module_layout = [&](const std::string& name, const Tensor& t) {
      out[name] = c.channel_first() ? ops::nhwc_to_nchw(ctx, t) : t.clone();
    };

    // (B, 3, H, W) -> (B, H, W, 3) -> patch embedding (B, H', W', C0)
    ctx.stage("patch_embed");
    const detail::Policy& policy = call.policy;
    policy.scope("patch_embed");
    Tensor cur = ops::nchw_to_nhwc(ctx, x);
    policy.apply(ctx, Boundary::Activation, cur);  // the input in the compute dtype, as a cast model reads it
    for (size_t e = 0; e < embed_.size(); ++e) {
      cur = conv_ln(ctx, cur, embed_[e], "patch_embed", policy);
      if (e + 1 < embed_.size()) {
        ops::activate(ctx, ops::Act::Gelu, cur, policy.rounding(Boundary::Activation));
        policy.check(ctx, Boundary::Activation, cur);
      }
    }
    if (want.has("patch_embed")) emit_module_layout("patch_embed", cur);

    for (int64_t i = 0; i < c.stages(); ++i) {
      const std::string si = std::to_string(i);
      ctx.stage("stage." + si);
      const int64_t H = cur.dim(1), W = cur.dim(2), C = cur.dim(3);
      const auto orders = orders_cache_.get({H, W}, [&] { return cross_scan_orders(H, W); });
      const ssm::SS2DOrders ord = {(*orders)[0].data(), (*orders)[1].data(), (*orders)[2].data(),
                                   (*orders)[3].data()};
      // The blocks run over groups of images (cur_g: (g, H, W, C) slices of the batch tensor) whose activations
      // stay in cache; the widest is the scan's four directions, (4, d_inner, H*W) per image.
      const int64_t group = detail::images_per_group(call.batch_group, B, 4 * c.d_inner(i) * H * W * 4);
      Tensor normed = ctx.empty({group, H, W, C});  // the current group's normed tokens
      // The MLP runs over row chunks of about kMlpChunkBytes of hidden activations (fc1 -> GELU -> fc2 per chunk):
      // the hidden buffer stays small and in cache instead of (g*H*W, hidden) at full size.
      const int64_t hd = c.mlp_ratio > 0 ? c.mlp_hidden(i) : 0;
      const int64_t GL = group * H * W;  // rows of the largest group
      const int64_t nchunks = hd > 0 ? std::max<int64_t>(1, GL * hd * 4 / kMlpChunkBytes) : 1;
      const int64_t chunk_rows = (GL + nchunks - 1) / nchunks;
      Tensor hidden_buf;
      if (hd > 0) hidden_buf = ctx.empty({chunk_rows, hd});
      const bool want_op0 = i == 0 && want.has("layers.0.blocks.0.op");
      Tensor op0 = want_op0 ? ctx.empty({B, H, W, C}) : Tensor();  // block 0's SS2D output, for the goldens
      for (int64_t b0 = 0; b0 < B; b0 += group) {
        const int64_t b1 = std::min(B, b0 + group), gl = (b1 - b0) * H * W;
        Tensor cur_g = cur.slice0(b0, b1), normed_g = normed.slice0(0, b1 - b0);
        for (size_t j = 0; j < blocks_[static_cast<size_t>(i)].size(); ++j) {
          const Block& blk = blocks_[static_cast<size_t>(i)][j];
          policy.scope("stage." + si + ".block." + std::to_string(j));
          // x += SS2D(norm(x))
          ops::layer_norm(ctx, cur_g, blk.norm_w, blk.norm_b, kLnEps, normed_g, policy.rounding(Boundary::Activation));
          policy.check(ctx, Boundary::Activation, normed_g);
          if (want_op0 && j == 0) {
            const Tensor op = ssm::ss2d_forward(ctx, normed_g, blk.op, ord, policy);
            std::memcpy(op0.slice0(b0, b1).raw(), op.raw(), op.nbytes());
            ops::add(ctx, cur_g, op, policy.rounding(Boundary::Residual));
            policy.check(ctx, Boundary::Residual, cur_g);
          } else {
            ssm::ss2d_forward(ctx, normed_g, blk.op, ord, policy, &cur_g);
          }
          // x += fc2(GELU(fc1(norm2(x))))
          if (hd > 0) {
            ops::layer_norm(ctx, cur_g, blk.norm2_w, blk.norm2_b, kLnEps, normed_g,
                            policy.rounding(Boundary::Activation));
            policy.check(ctx, Boundary::Activation, normed_g);
            const Tensor normed_rows = normed_g.reshape({gl, C});
            Tensor cur_rows = cur_g.reshape({gl, C});
            for (int64_t r0 = 0; r0 < gl; r0 += chunk_rows) {
              const int64_t r1 = std::min(gl, r0 + chunk_rows);
              Tensor in = normed_rows.slice0(r0, r1), res = cur_rows.slice0(r0, r1);
              Tensor hidden = hidden_buf.slice0(0, r1 - r0);  // (rows, hidden)
              policy.linear(ctx, Boundary::Mlp, in, blk.fc1, hidden, ops::Act::Gelu);  // GELU fused; checks
              if (!policy.reduced()) {  // f32: fc2 accumulates straight into the residual
                ops::linear(ctx, hidden, blk.fc2, res, /*accumulate=*/true);
              } else {
                policy.linear(ctx, Boundary::Mlp, hidden, blk.fc2, in);  // these rows of normed are free again
                ops::add(ctx, res, in, policy.rounding(Boundary::Residual));
                policy.check(ctx, Boundary::Residual, res);
              }
            }
          }
        }
      }
      if (want_op0) emit_module_layout("layers.0.blocks.0.op", op0);
      if (api && !c.backbone) {
        out["stage." + si] = ops::nhwc_to_nchw(ctx, cur);
      } else if (want.has("stage." + si)) {
        emit_module_layout("stage." + si, cur);
      }
      auto on = outnorm_.find(i);
      if (c.backbone && on != outnorm_.end() && (api || want.has("features." + si))) {
        Tensor o = ctx.empty({B, H, W, C});
        ops::layer_norm(ctx, cur, on->second.first, on->second.second, kLnEps, o, policy.rounding(Boundary::Activation));
        policy.check(ctx, Boundary::Activation, o);
        out["features." + si] = ops::nhwc_to_nchw(ctx, o);
      }
      if (i + 1 < c.stages()) {
        ctx.stage("downsample." + si);
        policy.scope("downsample." + si);
        cur = downsample(ctx, cur, i, policy);
      }
    }

    const bool logits_wanted = c.num_classes > 0 && want.has("logits");
    if (!c.backbone && (logits_wanted || api)) {
      ctx.stage("head");
      policy.scope("head");
      const int64_t L = cur.dim(1) * cur.dim(2), C = cur.dim(3);
      Tensor normed = ctx.empty({B, L, C});
      ops::layer_norm(ctx, cur, cls_norm_w_, cls_norm_b_, kLnEps, normed, policy.rounding(Boundary::Activation));
      policy.check(ctx, Boundary::Activation, normed);
      Tensor pooled = ops::mean_tokens(ctx, normed);  // (B, C): the pre-logits embedding
      policy.apply(ctx, Boundary::Activation, pooled);
      if (api) out["embedding"] = pooled;
      if (logits_wanted) {
        Tensor logits = ctx.empty({B, c.num_classes});
        policy.linear(ctx, Boundary::Head, pooled, head_, logits);
        out["logits"] = logits;
      }
    }
    return out;
  }

 private:
  struct Downsample {
    ConvLn conv;                     // v2 / v3
    Tensor merge_ln_w, merge_ln_b;   // v1: LN(4C)
    ops::PackedWeight reduction;     // v1: Linear(4C -> Co)
  };

  // conv then LayerNorm over its output channels: (B, H, W, Ci) -> (B, Ho, Wo, Co)
  static Tensor conv_ln(const ExecContext& ctx, const Tensor& x, const ConvLn& cl, const char* what,
                        const detail::Policy& policy) {
    const int64_t H = x.dim(1), W = x.dim(2);
    const ops::Conv2dWeight& cw = cl.conv;
    MAMBACV_CHECK(ops::conv_out_size(H, cw.kh, cw.sh, cw.ph) >= 1 && ops::conv_out_size(W, cw.kw, cw.sw, cw.pw) >= 1,
                  "input: a " << H << "x" << W << " map is too small for the " << what << " convolution");
    Tensor y = ops::conv2d(ctx, x, cw);
    policy.apply(ctx, Boundary::Activation, y);
    ops::layer_norm(ctx, y, cl.ln_w, cl.ln_b, kLnEps, y, policy.rounding(Boundary::Activation));
    policy.check(ctx, Boundary::Activation, y);
    return y;
  }

  // stage i's downsample: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), dims[i+1])
  Tensor downsample(const ExecContext& ctx, const Tensor& x, int64_t i, const detail::Policy& policy) const {
    const Downsample& d = down_[static_cast<size_t>(i)];
    if (cfg_.downsample != "v1") return conv_ln(ctx, x, d.conv, "downsample", policy);
    // v1, PatchMerging2D: zero-pad bottom/right to even, concat the four 2x2 phases -> LN(4C) -> Linear(4C -> Co)
    Tensor m = ops::patch_merge_2x2(ctx, x);
    ops::layer_norm(ctx, m, d.merge_ln_w, d.merge_ln_b, kLnEps, m, policy.rounding(Boundary::Activation));
    policy.check(ctx, Boundary::Activation, m);
    Tensor y = ctx.empty({m.dim(0), m.dim(1), m.dim(2), d.reduction.N});
    policy.linear(ctx, Boundary::Activation, m, d.reduction, y);
    return y;
  }

  VMambaConfig cfg_;
  std::string arch_;
  std::vector<ConvLn> embed_;                // patch embedding: 1 (v1) or 2 (v2) conv + LN
  std::vector<std::vector<Block>> blocks_;  // [stage][block]
  std::vector<Downsample> down_;            // after stage i < stages - 1
  std::map<int64_t, std::pair<Tensor, Tensor>> outnorm_;  // backbone: stage -> LN (weight, bias)
  Tensor cls_norm_w_, cls_norm_b_;
  ops::PackedWeight head_;
  mutable ShapeCache<std::pair<int64_t, int64_t>, std::array<std::vector<int32_t>, kCrossScanDirections>> orders_cache_;
};

}  // namespace

std::unique_ptr<Network> make_vmamba_network(const ModelConfig& mc) {
  return std::make_unique<VMambaNetwork>(mc, /*backbone=*/false);
}
std::unique_ptr<Network> make_vmamba_backbone_network(const ModelConfig& mc) {
  return std::make_unique<VMambaNetwork>(mc, /*backbone=*/true);
}

}  // namespace mambacv::detail
