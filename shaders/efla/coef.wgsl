//! include-only
// Per-step coefficients of the update rule (docs/efla.md) in f32: (alpha, dk factor, dbeta factor)
// with alpha = beta g(beta lambda) for EFLA, beta for the delta rule, and in the backward
// dbeta = dalpha * z and dk += k * dalpha * y. WGSL has no expm1, so g and g' use their Taylor
// series for |x| < 1 (truncation below 2e-10) and the closed forms above, where they lose
// nothing to cancellation.

// g(x) = (1 - exp(-x)) / x = sum_n (-x)^n / (n+1)!
fn efla_g(x: f32) -> f32 {
    if abs(x) < 1.0 {
        let y = -x;
        var s = 1.0 / 479001600.0;
        s = s * y + 1.0 / 39916800.0;
        s = s * y + 1.0 / 3628800.0;
        s = s * y + 1.0 / 362880.0;
        s = s * y + 1.0 / 40320.0;
        s = s * y + 1.0 / 5040.0;
        s = s * y + 1.0 / 720.0;
        s = s * y + 1.0 / 120.0;
        s = s * y + 1.0 / 24.0;
        s = s * y + 1.0 / 6.0;
        s = s * y + 0.5;
        s = s * y + 1.0;
        return s;
    }
    return (1.0 - exp(-x)) / x;
}

// g'(x) = -sum_m (m+1) / (m+2)! (-x)^m = -1/2 + x/3 - x^2/8 + x^3/30 - ...
fn efla_gp(x: f32) -> f32 {
    if abs(x) < 1.0 {
        let y = -x;
        var s = 12.0 / 6227020800.0;
        s = s * y + 11.0 / 479001600.0;
        s = s * y + 10.0 / 39916800.0;
        s = s * y + 9.0 / 3628800.0;
        s = s * y + 8.0 / 362880.0;
        s = s * y + 7.0 / 40320.0;
        s = s * y + 6.0 / 5040.0;
        s = s * y + 5.0 / 720.0;
        s = s * y + 4.0 / 120.0;
        s = s * y + 3.0 / 24.0;
        s = s * y + 2.0 / 6.0;
        s = s * y + 0.5;
        return -s;
    }
    return (exp(-x) * (1.0 + x) - 1.0) / (x * x);
}

// (alpha, dk factor 2 beta^2 g'(x), dbeta factor exp(-x)) for EFLA; (beta, 0, 1) for delta.
fn rule_coefs(efla: bool, beta: f32, lambda: f32) -> vec3<f32> {
    if !efla {
        return vec3<f32>(beta, 0.0, 1.0);
    }
    let x = beta * lambda;
    return vec3<f32>(beta * efla_g(x), 2.0 * beta * beta * efla_gp(x), exp(-x));
}
