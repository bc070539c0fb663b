use ftedit::model::*;
use ftedit::train::*;
use tch::{Kind, Device};
fn main() {
    let cfg = ArchConfig::Llama(llama::Config { vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 64, tie_word_embeddings: true, attention_bias: false, sliding_window: None });
    let m = Model::random(cfg, 7, 0.2, Kind::Double, Device::Cpu).unwrap();
    let name = m.mlp_out_proj(1);
    m.params.set_trainable(&name, true).unwrap();
    let batch = vec![Example { prompt: vec![3, 17, 42, 5], target: vec![9, 11] }];
    let loss = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap();
    loss.backward();
    let w = m.params.get(&name).unwrap();
    let grad = w.grad().copy();
    println!("loss {} grad00 {} gradnorm {}", loss.double_value(&[]), grad.double_value(&[0,0]), grad.norm().double_value(&[]));
    let _g = tch::no_grad_guard();
    for h in [1e-3, 1e-4, 1e-6] {
        let mut e = w.get(0).get(0);
        let orig = e.double_value(&[]);
        let _ = e.fill_(orig + h);
        let plus = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap().double_value(&[]);
        let _ = e.fill_(orig - h);
        let minus = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap().double_value(&[]);
        let _ = e.fill_(orig);
        println!("h {h} plus {plus} minus {minus} fd {}", (plus-minus)/(2.0*h));
    }
}
