//! candle glue of the fused attention (`kernels::attention`): the gate and a forward-only
//! custom op over (q, K, V) that reads the additive mask it carries.
//!
//! The gate admits the inference forward only: f32 on the CPU, nothing tracked by autograd
//! (the op has no backward, so training keeps the composed ops), q contiguous, K and V with a
//! contiguous last dimension (the KV cache's views), the mask contiguous [b, 1, 1, t, s].

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::attention::{attention, Dims, Strided};

/// softmax(q·Kᵀ·scale + mask)·V as [b, t, heads·d] for q [b, heads, t, d], K and V
/// [b, kv_heads, s, d] and the mask [b, 1, 1, t, s], by the fused kernel; `None` when the gate
/// does not admit the operands.
pub fn try_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let (Ok((b, heads, t, d)), Ok((kb, kv_heads, s, kd)), Ok(mask_dims)) =
        (q.dims4(), k.dims4(), mask.dims5())
    else {
        return Ok(None);
    };
    let plain = [q, k, v, mask]
        .iter()
        .all(|x| x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op());
    if !plain
        || v.dims() != k.dims()
        || (kb, kd) != (b, d)
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || mask_dims != (b, 1, 1, t, s)
        || !q.is_contiguous()
        || !mask.is_contiguous()
        || k.stride()[3] != 1
        || v.stride()[3] != 1
    {
        return Ok(None);
    }
    let op = FusedAttention {
        mask: mask.clone(),
        dims: Dims {
            b,
            heads,
            kv_heads,
            t,
            s,
            d,
        },
        scale: scale as f32,
    };
    Ok(Some(q.apply_op3_no_bwd(k, v, &op)?))
}

/// The op: (q, K, V) → [b, t, heads·d], with the mask it was built with.
struct FusedAttention {
    mask: Tensor,
    dims: Dims,
    scale: f32,
}

fn strided<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<Strided<'a>> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fused-attention: {what} is not f32");
    };
    let st = layout.stride();
    if st.len() != 4 || st[3] != 1 {
        candle_core::bail!("fused-attention: {what} has strides {st:?}, the last must be 1");
    }
    Ok(Strided {
        data,
        offset: layout.start_offset(),
        strides: [st[0], st[1], st[2]],
    })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = super::contiguous_f32(s1, l1, self.name(), "q")?;
        let (k, v) = (strided(s2, l2, "K")?, strided(s3, l3, "V")?);
        let (mask_storage, mask_layout) = self.mask.storage_and_layout();
        let Storage::Cpu(mask_cpu) = &*mask_storage else {
            candle_core::bail!("fused-attention: the mask is not on the CPU");
        };
        let mask = super::contiguous_f32(mask_cpu, mask_layout, self.name(), "mask")?;
        let Dims { b, heads, t, d, .. } = self.dims;
        let mut out = vec![0f32; b * t * heads * d];
        attention(q, k, v, mask, self.dims, self.scale, &mut out).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads * d))))
    }
}
