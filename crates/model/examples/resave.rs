//! Loads an HF model folder (GPT-2, Llama, Qwen2) and saves it again: `cargo run -p coconut-model --example resave
//! -- SRC DST`. The fixture script uses it to check that transformers loads what we write.
use coconut_model::{load_pretrained, save_pretrained};
use tch::{nn::VarStore, Device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, dst] = args.as_slice() else {
        return Err("usage: resave SRC DST".into());
    };
    let vs = VarStore::new(Device::Cpu);
    let model = load_pretrained(&vs, src.as_ref())?;
    save_pretrained(&vs, model.as_ref(), dst.as_ref())?;
    Ok(())
}
